"""The load generators of ``bench/serve.py``: a Python asyncio client and ``wrk`` (with a probe
that times 429s under overload), and the result row both report.

The Python client honours ``Retry-After`` and reads the server's own stage timings from each
answer; ``wrk`` (C, one thread) costs far less CPU per request, which matters when client and
server share a small machine, and runs at a lower priority than the server (``NICE``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BACKOFF_MS = 50  # overload with wrk: a refused connection's wait (Retry-After says 1 s)
# the load generator yields the cores to the server (on one small machine they share them)
NICE = ["nice", "-n", "10"] if shutil.which("nice") else []


@dataclass
class Result:
    scenario: str
    concurrency: int
    requests: int
    ok: int
    rejected: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    rejected_p50_ms: float  # how fast a 429 comes back (load shedding must be cheap)
    server_ms: dict[str, float] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    rejected_p99_ms: float = 0.0
    client: str = "python"
    probe_admitted: int = 0  # overload: the probe's requests that a worker with a free slot took
    connections: list[int] = field(default_factory=list)  # wrk's, per worker, most first


def connections_per_worker(server_pid: int, port: int, workers: int) -> list[int]:
    """Established connections on ``port`` that each server process holds (the server and its
    child processes; Linux's /proc), most first, ``workers`` entries; [] where unreadable.

    With several workers, how wrk's few kept-alive connections fell on them sets the rate more
    than anything else (a worker with 6 of 8 connections is the bottleneck), so it is reported.
    """
    try:
        sockets = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{cols[9]}]")
        children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        counts = []
        for pid in [server_pid, *map(int, children)]:
            fds = Path(f"/proc/{pid}/fd").iterdir()
            held = sum(1 for fd in fds if os.readlink(fd) in sockets)
            if held:
                counts.append(held)
    except OSError:
        return []
    counts.sort(reverse=True)
    return counts + [0] * max(0, workers - len(counts))


def captions(n: int, seed: int) -> list[str]:
    """Distinct random captions from the tiny preset's words (no query is sent twice)."""
    from model.tiny import tiny_words

    core, general = tiny_words()
    pool = core * 4 + general
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add("a " + " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8))))
    return sorted(out, key=lambda _: rng.random())


async def run_load(
    url: str, scenario: str, mode: str, texts: list[str], concurrency: int, max_seconds: float
) -> Result:
    latencies: list[float] = []
    refusals: list[float] = []
    stages: dict[str, list[float]] = {"encode_ms": [], "search_ms": [], "rescore_ms": []}
    counts = {"ok": 0, "rejected": 0, "errors": 0}
    kinds: dict[str, int] = {}

    def error(kind: str) -> None:
        counts["errors"] += 1
        kinds[kind] = kinds.get(kind, 0) + 1

    queue = list(reversed(texts))
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(http: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            body = {"query": queue.pop(), "mode": mode, "top_k": 10, "query_words_limit": 10}
            t0 = time.perf_counter()
            try:
                r = await http.post("/search", json=body)
            except httpx.HTTPError as exc:
                error(type(exc).__name__)
                continue
            elapsed = (time.perf_counter() - t0) * 1e3
            if r.status_code == 200:
                counts["ok"] += 1
                latencies.append(elapsed)
                for key in stages:
                    stages[key].append(r.json()["timings"][key])
            elif r.status_code == 429:
                counts["rejected"] += 1
                refusals.append(elapsed)
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))  # as told
            else:
                error(f"{r.status_code}: {r.text[:120]}")

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client_loop(http) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.zeros(1)
    return Result(
        scenario=scenario,
        concurrency=concurrency,
        requests=sum(counts.values()),
        ok=counts["ok"],
        rejected=counts["rejected"],
        errors=counts["errors"],
        seconds=round(seconds, 2),
        rps=round(counts["ok"] / seconds, 1),
        p50_ms=round(float(np.percentile(lat, 50)), 1),
        p90_ms=round(float(np.percentile(lat, 90)), 1),
        p99_ms=round(float(np.percentile(lat, 99)), 1),
        rejected_p50_ms=round(float(np.median(refusals)), 1) if refusals else 0.0,
        rejected_p99_ms=round(float(np.percentile(refusals, 99)), 1) if refusals else 0.0,
        server_ms={k: round(float(np.mean(v)), 2) if v else 0.0 for k, v in stages.items()},
        error_kinds=kinds,
    )


def run_wrk(
    url: str,
    scenario: str,
    mode: str,
    texts: list[str],
    concurrency: int,
    seconds: float,
    probe: bool = False,
    server: tuple[int, int] | None = None,
) -> Result:
    """The same load from ``wrk`` (C, one thread): on a 2-core machine the Python client's own
    CPU time caps what it can measure, wrk's barely does. No per-request server timings; 429s
    and other non-2xx answers are counted together as ``rejected``.

    With ``probe`` (the overload scenario), wrk keeps every admission slot of the server busy
    (its refused connections wait ``BACKOFF_MS`` before retrying, as clients honouring
    Retry-After do) and this process sends one more request at a time, ~40 per second, on one
    kept-alive connection (:class:`Probe`), timing each 429 it gets. With several workers the
    kernel gives each connection to one of them, and one with a free slot admits the probe; after
    an admitted request the probe opens a new connection (their count is ``probe_admitted``):
    how fast a server whose slots are all taken by running searches refuses the next request (a
    saturated Python client would time its own event loop instead).

    ``server`` (pid, workers): report how wrk's connections fell on the workers."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        lines = (
            json.dumps({"query": t, "mode": mode, "top_k": 10, "query_words_limit": 10})
            for t in texts
        )
        bodies.write_text("\n".join(lines) + "\n")
        summary = Path(tmp) / "summary.json"
        command = [
            *NICE, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
            "-s", str(ROOT / "bench" / "serve_wrk.lua"), url, "--", str(bodies),
        ]  # fmt: skip
        env = {**os.environ, "WRK_SUMMARY": str(summary)}
        if probe:
            env["WRK_BACKOFF_MS"] = str(BACKOFF_MS)
        flood = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        refusals: list[float] = []
        probe_ok = 0
        time.sleep(1.0)  # wrk's connections are open; under overload, the slots are full
        port = urlsplit(url).port or 80
        split = connections_per_worker(server[0], port, server[1]) if server else []
        if probe:
            with Probe(url) as http:
                for text in texts[::-1]:
                    if flood.poll() is not None:
                        break
                    status, elapsed = http.post_search({"query": text, "mode": mode, "top_k": 10})
                    if status == 429:
                        refusals.append(elapsed)
                    else:  # a worker with a free slot took it: try another connection, which
                        probe_ok += status == 200  # the kernel may give to a full worker
                        http.close()
                    time.sleep(0.02)
        _, err = flood.communicate()
        if flood.returncode != 0:
            raise RuntimeError(f"wrk failed: {err.decode()[-500:]}")
        w = json.loads(summary.read_text())
    ok = w["requests"] - w["non_2xx"] - w["socket_errors"]
    return Result(
        scenario=scenario,
        concurrency=concurrency,
        requests=w["requests"] + len(refusals) + probe_ok,
        ok=ok,
        rejected=w["non_2xx"] + len(refusals),
        errors=w["socket_errors"],
        seconds=round(w["seconds"], 2),
        rps=round(ok / w["seconds"], 1),
        p50_ms=round(w["p50_ms"], 1),
        p90_ms=round(w["p90_ms"], 1),
        p99_ms=round(w["p99_ms"], 1),
        rejected_p50_ms=round(float(np.median(refusals)), 1) if refusals else 0.0,
        rejected_p99_ms=round(float(np.percentile(refusals, 99)), 1) if refusals else 0.0,
        server_ms={"encode_ms": 0.0, "search_ms": 0.0, "rescore_ms": 0.0},
        client="wrk+probe" if probe else "wrk",
        probe_admitted=probe_ok,
        connections=split,
    )


class Probe:
    """One keep-alive HTTP/1.1 connection that times ``POST /search`` from the first byte sent
    to the last byte of the answer read.

    Written on a bare socket because the probe must measure the server: httpx spends ~1 ms of
    Python per request, and on a 2-core machine whose cores the server and wrk keep busy, that
    time (and the probe's wait for a core) was most of what the 429 timings showed.
    """

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.sock: socket.socket | None = None

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post_search(self, body: dict) -> tuple[int, float]:
        """(status, milliseconds) of one request; reconnects if the server closed the line."""
        data = json.dumps(body).encode()
        request = (
            f"POST /search HTTP/1.1\r\nhost: {self.address[0]}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        ).encode() + data
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=30)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            try:
                self.sock.sendall(request)
                status = self._read_answer(self.sock)
                return status, (time.perf_counter() - start) * 1e3
            except ConnectionError:
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _read_answer(sock: socket.socket) -> int:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
        length = int(fields.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            body += chunk
        return int(lines[0].split(" ", 2)[1])


def row_text(r: Result) -> str:
    s = r.server_ms
    probe = f"probe admitted {r.probe_admitted}  " if r.client == "wrk+probe" else ""
    if len(r.connections) > 1:
        probe += f"wrk connections per worker {'/'.join(map(str, r.connections))}  "
    return (
        f"{r.scenario:9s} {r.client:9s} w={r.workers} c={r.concurrency:<3d} {r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f} ms  "
        f"p90 {r.p90_ms:6.1f}  p99 {r.p99_ms:6.1f}  ok {r.ok}  429 {r.rejected} "
        f"(p50 {r.rejected_p50_ms:.1f} / p99 {r.rejected_p99_ms:.1f} ms)  err {r.errors}  {probe}"
        f"| server: encode {s['encode_ms']:.1f}  search {s['search_ms']:.1f}  "
        f"rescore {s['rescore_ms']:.1f} ms"
    )
