"""End to end: index generated images, start uvicorn on loopback, search, explain, swap, stop."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image


def test_index_serve_search_explain_reload_stop(live_server, tiny_model):
    from service_fixtures import index_folder, stop, write_images

    url, corpus = live_server.url, live_server.corpus
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        ready = http.get("/readyz").json()
        assert ready["ready"] and ready["images"] == len(corpus.ids)

        found = http.post("/search", json={"query": "a blue square", "top_k": 5}).json()
        assert len(found["hits"]) == 5 and found["index_version"] == "v0001"
        hit = found["hits"][0]
        assert hit["score"] == pytest.approx(
            sum(m["contribution"] for m in hit["matched"]) + hit["other_contribution"]
        )
        thumb = http.get(hit["thumbnail_url"])
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"

        words = http.post("/search", json={"query": "blue square", "mode": "words"}).json()
        assert {w["word"] for w in words["query_words"]} == {"blue", "square"}

        ex = http.post("/explain", json={"query": "a blue square", "image_id": hit["id"]})
        assert ex.status_code == 200, ex.text
        explanation = ex.json()
        assert explanation["score"] == pytest.approx(hit["score"])
        heat = http.get(explanation["heatmaps"][0]["url"])
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"

        metrics = http.get("/metrics").text
        assert 'lexvla_stage_seconds_count{stage="explain"} 1.0' in metrics

        # index more images with the job runner; the running server swaps them in on request
        write_images(corpus.images, n_extra=2, start=50)
        index_folder(tiny_model, corpus.images, corpus.store, corpus.index)
        denied = http.post("/admin/reload")
        assert denied.status_code == 401
        swapped = http.post("/admin/reload", headers={"X-API-Key": "live-key"}).json()
        assert swapped["current"] == "v0002" and swapped["images"] == len(corpus.ids) + 2
        after = http.post("/search", json={"query": "a blue square", "top_k": 5}).json()
        assert after["index_version"] == "v0002"

    # SIGTERM: uvicorn finishes the lifespan, then exits by the signal it caught (0 on older ones)
    assert stop(live_server.process) in (0, -15)
    log = live_server.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_workers_share_one_port_with_the_settings_of_the_command(
    tiny_checkpoint, tiny_model, tmp_path
):
    """``lexvla serve --workers 2``: both processes answer, configured by the command's flags
    (passed to them as LEXVLA_* variables), over the same memory-mapped index; connections
    opened together are spread over both (a listening socket each, SO_REUSEPORT: uvicorn's
    workers shared one); a worker that dies is replaced; a second server on the
    same port is refused in one line; SIGTERM stops them all with status 0."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from collections import Counter

    from service_fixtures import REPO, build_corpus, free_port, stop, wait_ready

    corpus = build_corpus(tiny_model, tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "service", "--checkpoint", str(tiny_checkpoint),
        "--index", str(corpus.index), "--store", str(corpus.store), "--port", str(port),
        "--workers", "2", "--max-top-k", "3", "--log-level", "info",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"

    def worker_pids(deadline_s: float = 120) -> set[int]:
        pids: set[int] = set()
        deadline = time.monotonic() + deadline_s
        while len(pids) < 2 and time.monotonic() < deadline:  # a new connection each time
            with httpx.Client(base_url=url, timeout=30) as fresh:
                try:
                    r = fresh.post("/search", json={"query": "a red circle", "top_k": 2})
                    pid = fresh.get("/healthz").json()["pid"]
                except httpx.TransportError:  # a connection to a worker as it was killed
                    continue
                assert r.status_code == 200 and len(r.json()["hits"]) == 2
                pids.add(pid)
        return pids

    try:
        wait_ready(url, process, log, timeout=180)
        pids = worker_pids()
        assert len(pids) == 2, "only one worker answered"
        with httpx.Client(base_url=url, timeout=30) as http:
            too_many = http.post("/search", json={"query": "a red circle", "top_k": 5})
            assert too_many.status_code == 422 and "limit of 3" in too_many.text

        assert _listening_sockets(port) == 2  # one per worker (uvicorn's workers share one)
        # 64 connections opened at once, then each asks which worker holds it
        held = _connections_at_once(port, 64)
        try:
            per_worker = Counter(_healthz_pid(sock) for sock in held)
        finally:
            for sock in held:
                sock.close()
        assert set(per_worker) == pids and min(per_worker.values()) >= 16, per_worker

        killed = min(pids)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while (killed in pids or len(pids) < 2) and time.monotonic() < deadline:
            pids = worker_pids(5)
        assert len(pids) == 2 and killed not in pids, "the killed worker was not replaced"

        second = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert stop(process) == 0
    text = log.read_text()
    assert f"exited with status -{int(signal.SIGKILL)}" in text and "restarting it" in text


def _listening_sockets(port: int) -> int:
    """TCP sockets listening on ``port`` (Linux's socket tables)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


def _connections_at_once(port: int, n: int) -> list:
    """``n`` connections started together (as a load generator or a proxy's pool opens them),
    returned once all are established."""
    import select
    import socket

    held = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    for sock in held:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    pending = set(held)
    while pending:
        _, ready, _ = select.select([], list(pending), [], 30)
        assert ready, "connections did not complete"
        pending -= set(ready)
    for sock in held:
        sock.setblocking(True)
        sock.settimeout(30)
    return held


def _healthz_pid(sock) -> int:
    """GET /healthz on an open connection; the answering worker's pid."""
    import json

    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return int(json.loads(body)["pid"])
