"""``service.workers``: the port a multi-worker server listens on, and the supervisor that keeps
its worker processes running (the whole server: tests/test_service_e2e.py)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from service import workers

pytestmark = pytest.mark.skipif(
    not workers.reuse_port_supported(), reason="SO_REUSEPORT workers are Linux-only"
)


def test_a_port_in_use_is_refused_whoever_holds_it():
    """Another program's port is refused in one line, also one listening with SO_REUSEPORT
    (another lexvla serve): joining it would quietly take half of its connections."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(workers.PortInUse, match=f"cannot listen on 127.0.0.1:{port}: "):
            workers.reserve_port("127.0.0.1", port)
    with workers.worker_socket("127.0.0.1", 0) as other_server:
        port = other_server.getsockname()[1]
        with pytest.raises(workers.PortInUse, match="Address already in use"):
            workers.reserve_port("127.0.0.1", port)


def test_the_reserved_port_is_shared_by_the_workers_sockets_only():
    """Port 0 reserves a free port; workers' sockets bind it beside the parent's and take its
    connections; the parent's socket (bound, not listening) receives none."""
    with workers.reserve_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with (
            workers.worker_socket("127.0.0.1", port) as a,
            workers.worker_socket("127.0.0.1", port) as b,
        ):
            for listener in (a, b):
                listener.settimeout(0)
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            accepted = 0
            deadline = time.monotonic() + 10
            while accepted < len(clients) and time.monotonic() < deadline:
                for listener in (a, b):
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.close()
                    accepted += 1
            for client in clients:
                client.close()
            assert accepted == len(clients)
        with pytest.raises(OSError):  # never listened: nothing to accept
            held.accept()


def _exit_with(status: int, marks: str) -> None:
    """A worker that records its start in the folder ``marks`` and exits at once."""
    Path(marks, f"{os.getpid()}").touch()
    sys.exit(status)


def _serve_until_stopped(marks: str) -> None:
    Path(marks, f"{os.getpid()}").touch()
    time.sleep(60)


def test_a_worker_that_fails_to_start_stops_the_server(tmp_path):
    supervisor = workers.Supervisor(2, _exit_with, (workers.STARTUP_FAILURE, str(tmp_path)))
    started = time.monotonic()
    assert supervisor.run() == 2
    assert time.monotonic() - started < 30
    assert all(not p.is_alive() for p in supervisor.processes)


def test_a_dead_worker_is_restarted_with_growing_pauses(tmp_path, caplog):
    """Each death is logged and the worker started again: at once the first time, after a
    pause when it keeps dying; stopping ends the loop with status 0."""
    supervisor = workers.Supervisor(1, _exit_with, (1, str(tmp_path)))
    threading.Timer(6.0, lambda: setattr(supervisor, "stopping", True)).start()
    with caplog.at_level("WARNING", logger="lexvla.serve"):
        assert supervisor.run() == 0
    starts = len(list(tmp_path.iterdir()))
    # started, died; restarted at once, died; restarted after 1 s, died; after 2 s, ...
    assert 2 <= starts <= 5, starts
    assert "exited with status 1" in caplog.text and "restarting it in 1 s" in caplog.text


def test_stopping_terminates_every_worker(tmp_path):
    supervisor = workers.Supervisor(2, _serve_until_stopped, (str(tmp_path),))
    threading.Timer(3.0, lambda: setattr(supervisor, "stopping", True)).start()
    started = time.monotonic()
    assert supervisor.run() == 0
    assert time.monotonic() - started < 30  # SIGTERM, not the workers' 60 s sleep
    assert len(list(tmp_path.iterdir())) == 2  # started once each, never restarted
    assert all(p.exitcode == -15 for p in supervisor.processes)
