"""``lexvla serve --workers 2`` end to end: gunicorn workers on a socket each, one metrics view,
every worker on the published version (a publish, a pin, a restart), hung and killed workers
replaced, reloads and restarts under load (``service.workers``, ``service.state``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import workers
from tests.process_probes import (
    alive,
    children,
    connections_at_once,
    healthz_pid,
    listening_sockets,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a socket per worker (SO_REUSEPORT) is Linux's"
)
ADMIN = {"X-API-Key": "admin-key"}
# A worker silent this long is killed and replaced. Deadlines below are generous multiples of
# it and of a start-up: they bound a hang, and hold on a loaded 2-core machine.
WORKER_TIMEOUT_S = 20


def test_a_port_in_use_is_refused_whoever_holds_it():
    """Another program's port is refused in one line, also one listening with SO_REUSEPORT
    (another lexvla serve): joining it would quietly take half of its connections."""
    import socket

    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(workers.PortInUse, match=f"cannot listen on 127.0.0.1:{port}: "):
            workers.check_port("127.0.0.1", port)
    with socket.socket() as other_server:
        other_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        with pytest.raises(workers.PortInUse, match="Address already in use"):
            workers.check_port("127.0.0.1", port)
    assert workers.check_port("127.0.0.1", 0) > 0  # port 0: a free one, chosen once for all


def test_a_run_folder_starts_without_an_earlier_servers_files(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_123.db").write_bytes(b"old")
    (tmp_path / "processes").mkdir()
    (tmp_path / "processes" / "123.json").write_text("{}")
    assert workers.prepare_run_dir(tmp_path) == tmp_path
    assert not any((tmp_path / "metrics").iterdir()) and not any((tmp_path / "processes").iterdir())
    made = workers.prepare_run_dir(None)
    assert (made / "metrics").is_dir() and made.name.startswith("lexvla-serve-")


def test_the_registry_lists_live_processes_only(tmp_path):
    from service.core.processes import ProcessRegistry

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, sibling = ProcessRegistry(tmp_path), ProcessRegistry(tmp_path, pid=os.getppid())
    gone = ProcessRegistry(tmp_path, pid=dead.pid)
    for registry, version in ((mine, "v0002"), (sibling, "v0001"), (gone, "v0001")):
        registry.record(version)
    mine.record("v0002", error="v0003 did not open: bad")
    seen = {p.pid: (p.index_version, p.error) for p in mine.statuses()}
    assert seen == {
        os.getpid(): ("v0002", "v0003 did not open: bad"),
        os.getppid(): ("v0001", None),
    }
    mine.forget(os.getppid())
    assert [p.pid for p in mine.statuses()] == [os.getpid()]
    assert ProcessRegistry(None).statuses() == []  # alone, before it serves


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    command: list[str]
    env: dict
    corpus: Any
    model: Any
    log: Path


@pytest.fixture(scope="module")
def server(tiny_model, tiny_checkpoint, tmp_path_factory):
    from service_fixtures import REPO, build_corpus, free_port, stop, wait_ready

    root = tmp_path_factory.mktemp("workers")
    corpus = build_corpus(tiny_model, root)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEXVLA_API_KEY": "admin-key"}
    command = [
        sys.executable, "-m", "service", "--checkpoint", str(tiny_checkpoint),
        "--index", str(corpus.index), "--store", str(corpus.store), "--port", str(port),
        "--workers", "2", "--max-top-k", "3", "--log-level", "info",
        "--index-refresh-s", "0.5", "--worker-timeout-s", str(WORKER_TIMEOUT_S),
    ]  # fmt: skip
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, timeout=300)
        assert len(_pids(url)) == 2, log.read_text()
        yield Server(url, port, process, command, env, corpus, tiny_model, log)
    finally:
        stop(process)


def _fresh(url: str, method: str, path: str, timeout: float = 30, **kwargs) -> httpx.Response:
    """One request on a new connection (so the kernel picks the worker anew)."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        return client.request(method, path, **kwargs)


def _pids(url: str, want: int = 2, deadline_s: float = 120) -> set[int]:
    """The pids of the workers answering fresh connections, once ``want`` of them answered."""
    pids: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while len(pids) < want and time.monotonic() < deadline:
        try:
            pids.add(_fresh(url, "GET", "/healthz", timeout=10).json()["pid"])
        except httpx.TransportError:  # a worker being killed, or a stopped one's socket
            continue
    return pids


def _readyz_all(url: str) -> dict:
    """/readyz of the server, answered by whichever worker: every process and its version."""
    body = _fresh(url, "GET", "/readyz").json()
    return {p["pid"]: p["index_version"] for p in body["processes"]}


def _publish(server: Server, start: int) -> None:
    from service_fixtures import index_folder, write_images

    write_images(server.corpus.images, n_extra=2, start=start)
    index_folder(server.model, server.corpus.images, server.corpus.store, server.corpus.index)


def test_each_worker_listens_on_its_own_socket_and_takes_its_share(server):
    assert listening_sockets(server.port) == 2  # one per worker: a shared one favours one
    held = connections_at_once(server.port, 64)
    try:
        per_worker = Counter(healthz_pid(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    assert len(per_worker) == 2 and min(per_worker.values()) >= 16, per_worker
    too_many = _fresh(server.url, "POST", "/search", json={"query": "a red circle", "top_k": 5})
    assert too_many.status_code == 422 and "limit of 3" in too_many.text  # flags reach workers


def test_one_scrape_counts_every_workers_requests(server):
    from prometheus_client.parser import text_string_to_metric_families

    def searches_and_versions() -> tuple[float, dict[str, str]]:
        text = _fresh(server.url, "GET", "/metrics").text
        count, versions = 0.0, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "lexvla_http_request_seconds_count"
                    and labels.get("route") == "/search"
                    and labels.get("status") == "200"
                ):
                    count += sample.value
                if sample.name == "lexvla_index_version_info" and sample.value == 1:
                    versions[labels["pid"]] = labels["version"]
        return count, versions

    before, versions = searches_and_versions()
    assert set(versions) == {str(p) for p in _pids(server.url)}
    for _ in range(40):
        found = _fresh(server.url, "POST", "/search", json={"query": "a blue square", "top_k": 2})
        assert found.status_code == 200
    after, _ = searches_and_versions()
    assert after - before == 40


def test_every_worker_follows_a_publish_by_itself(server):
    _publish(server, start=50)
    deadline = time.monotonic() + 180
    streak = 0
    while streak < 20:  # 20 fresh connections in a row on the new version
        assert time.monotonic() < deadline, _readyz_all(server.url)
        version = _fresh(server.url, "GET", "/readyz").json()["index_version"]
        streak = streak + 1 if version == "v0002" else 0
    assert set(_readyz_all(server.url).values()) == {"v0002"}


def test_a_reload_under_load_drops_nothing_and_answers_for_every_worker(server):
    statuses: list[int | str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = _fresh(
                    server.url, "POST", "/search", json={"query": "a green star", "top_k": 2}
                )
                statuses.append(r.status_code)
            except httpx.TransportError as exc:
                statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        pinned = _fresh(
            server.url, "POST", "/admin/reload", json={"version": "v0001"}, headers=ADMIN
        )
        assert pinned.status_code == 200, pinned.text
        assert [p["index_version"] for p in pinned.json()["processes"]] == ["v0001", "v0001"]
        assert set(_readyz_all(server.url).values()) == {"v0001"}
        unpinned = _fresh(server.url, "POST", "/admin/reload", headers=ADMIN)
        assert unpinned.status_code == 200 and unpinned.json()["current"] == "v0002"
        assert {p["index_version"] for p in unpinned.json()["processes"]} == {"v0002"}
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(statuses) > 10 and set(statuses) == {200}, Counter(statuses)


def test_a_killed_worker_comes_back_on_the_version_its_siblings_serve(server):
    pinned = _fresh(server.url, "POST", "/admin/reload", json={"version": "v0001"}, headers=ADMIN)
    assert pinned.status_code == 200
    before = _pids(server.url)
    killed = min(before)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 300
    pids = before
    while (killed in pids or len(pids) < 2) and time.monotonic() < deadline:
        pids = _pids(server.url, deadline_s=15)
    assert len(pids) == 2 and killed not in pids, "the killed worker was not replaced"
    assert _readyz_all(server.url) == dict.fromkeys(pids, "v0001")
    assert _fresh(server.url, "POST", "/admin/reload", headers=ADMIN).status_code == 200


def test_a_hung_worker_is_replaced(server):
    """A worker whose event loop stops answering (here: stopped by SIGSTOP) is killed by the
    arbiter after the worker timeout (``WORKER_TIMEOUT_S``) and replaced."""
    hung = min(_pids(server.url))
    os.kill(hung, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT_S + 300
        pids: set[int] = set()
        while (hung in pids or len(pids) < 2) and time.monotonic() < deadline:
            pids = _pids(server.url, deadline_s=15)
        assert len(pids) == 2 and hung not in pids, "the hung worker was not replaced"
        assert not alive(hung)
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGCONT)
    assert set(_readyz_all(server.url).values()) == {"v0002"}


def test_a_second_server_on_the_port_is_refused(server):
    from service_fixtures import REPO

    second = subprocess.run(
        server.command, env=server.env, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{server.port}" in second.stderr
    assert "Traceback" not in second.stderr


def test_a_graceful_restart_drops_no_request(server):
    """gunicorn's live upgrade: SIGUSR2 starts a new server (new code, new settings) beside the
    old one on the same port; once its workers answer, SIGTERM lets the old workers finish
    their requests and stop. Every request is answered meanwhile; SIGTERM then stops the new
    one (0). A stopping worker closes its idle kept-alive connections, and a request sent on
    one at that instant sees the connection close before any answer: as HTTP clients do, the
    client then sends it again, once, on a new connection (RFC 9110, 9.2.2)."""
    before = _pids(server.url)
    statuses: list[int | str] = []
    resent: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:  # kept alive
            while not stop.is_set():
                body = {"query": "a red square", "top_k": 2}
                try:
                    try:
                        r = client.post("/search", json=body)
                    except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
                        resent.append(type(exc).__name__)
                        r = client.post("/search", json=body)
                    statuses.append(r.status_code)
                except httpx.TransportError as exc:
                    statuses.append(type(exc).__name__)

    thread = threading.Thread(target=load)
    thread.start()
    upgraded: set[int] = set()
    try:
        server.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 300
        while not upgraded and time.monotonic() < deadline:
            upgraded = children(server.process.pid) - before  # the new server's arbiter
            time.sleep(0.1)
        new: set[int] = set()
        while len(new) < 2 and time.monotonic() < deadline:
            new |= _pids(server.url, want=4, deadline_s=15) - before
        assert len(new) == 2, "the new server's workers did not start"
        assert len(upgraded) == 1, upgraded
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(180) == 0
        assert _pids(server.url) == new
    finally:
        stop.set()
        thread.join(60)
        for arbiter in upgraded:  # even when an assertion failed: no server is left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(arbiter, signal.SIGTERM)
    assert len(statuses) > 10 and set(statuses) == {200}, (Counter(statuses), resent)
    assert len(resent) <= 2, resent  # at most one per closed connection (one per old worker)
    deadline = time.monotonic() + 180
    while any(alive(pid) for pid in (*upgraded, *new)):
        assert time.monotonic() < deadline, "SIGTERM did not stop the new server"
        time.sleep(0.2)
    assert "Traceback" not in server.log.read_text()
