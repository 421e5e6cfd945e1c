"""``lexvla serve --workers N``: N server processes on one port, each with a listening socket
of its own (``SO_REUSEPORT``), started and kept running by the command's process.

Why not uvicorn's ``--workers``. uvicorn shares one listening socket between its processes, and
whichever process wakes first accepts every connection that is waiting (the event loop accepts
until none is left). A client that keeps a few connections open, a load generator or a reverse
proxy's pool of upstream connections, then has most of them on one worker: wrk's 8 kept-alive
connections split 8/0, 7/1 or 6/2 over two workers in 9 tries of 9, and 64 opened together
62/2 in 4 tries of 5 (docs/benchmarks.md). With ``SO_REUSEPORT`` every worker listens on its own
socket and the kernel spreads new connections over the sockets by a hash of their addresses
(wrk's 8: 5/3 or 4/4 in 5 tries; the 64: 22/42 to 33/31). uvicorn has no option for a socket per worker, so this module starts the worker
processes itself; each one runs an ordinary ``uvicorn.Server`` on its socket.

Supervision: the parent restarts a worker that dies (after a growing pause if it keeps dying),
stops every worker on SIGINT or SIGTERM (each finishes its requests, as uvicorn's shutdown
does) and exits 0, and stops with exit status 2 if a worker fails while starting (its log says
why). Where ``SO_REUSEPORT`` is missing (not Linux), :func:`serve` falls back to uvicorn's
shared socket.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger("lexvla.serve")

STARTUP_FAILURE = 3  # a worker's exit status when its app did not start (uvicorn's too)
BACKLOG = 2048  # pending connections per worker socket (uvicorn's default)
RESTART_PAUSES = (0.0, 1.0, 2.0, 5.0, 10.0)  # before restarting a worker that died again soon
STABLE_S = 30.0  # a worker that lived this long starts the pauses afresh when it dies


class PortInUse(OSError):
    """The address is taken by another program (one line, for the command's message)."""


def reuse_port_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, sockaddr


def worker_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, listening unless ``listen`` is
    False (the parent's, which only holds the port)."""
    family, sockaddr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if listen:
            sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The parent's socket on ``host:port`` (port 0: a free one), bound but not listening: it
    holds the port for the workers' sockets, and receives no connection.

    A port that another program already uses is refused (:class:`PortInUse`), also one whose
    sockets have ``SO_REUSEPORT`` (another ``lexvla serve`` of the same user): joining it would
    silently share its traffic. The check binds the port plainly first.
    """
    if port:
        family, sockaddr = _address(host, port)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return worker_socket(host, port, listen=False)


def run_worker(host: str, port: int, log_level: str) -> None:
    """One worker (a spawned process): the app from the ``LEXVLA_*`` environment the parent
    set, served by uvicorn on a socket of its own."""
    import uvicorn

    from indexer.quiet import quiet_libraries
    from service.core.config import Settings
    from service.main import create_app

    quiet_libraries(verbose=log_level == "debug")  # as the parent: no progress bars
    sock = worker_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(Settings()), log_level=log_level))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Starts ``workers`` processes of ``target(*args)`` (:func:`run_worker`) and keeps them
    running."""

    def __init__(self, workers: int, target: Callable[..., None], args: tuple = ()):
        self.workers, self.target, self.args = workers, target, args
        self.context = multiprocessing.get_context("spawn")  # no fork of loaded libraries
        self.processes: list[BaseProcess] = []
        self.started: list[float] = []  # per worker: when its process started
        self.deaths: list[int] = []  # per worker: deaths in a row, each within STABLE_S
        self.restart_at: list[float | None] = []  # per worker: when a dead one starts again
        self.stopping = False

    def start(self, slot: int) -> BaseProcess:
        process = self.context.Process(
            target=self.target, args=self.args, name=f"lexvla-worker-{slot}"
        )
        process.start()
        return process

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (0) or a worker's failed start (2)."""
        with self._signals():
            self.processes = [self.start(slot) for slot in range(self.workers)]
            self.started = [time.monotonic()] * self.workers
            self.deaths = [0] * self.workers
            self.restart_at = [None] * self.workers
            status = self._watch()
            self._stop_all()
        return status

    def _watch(self) -> int:
        """Every 0.2 s: a dead worker is given its restart time (a failed start ends the
        server), and started again once that time comes; the others are not held up."""
        while not self.stopping:
            time.sleep(0.2)
            for slot, process in enumerate(self.processes):
                if self.stopping or process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %d could not start (its log is above); stopping", slot)
                    return 2
                restart_at = self.restart_at[slot]
                if restart_at is None:
                    self.restart_at[slot] = self._pause_after(slot, process)
                elif time.monotonic() >= restart_at:
                    self.processes[slot] = self.start(slot)
                    self.started[slot], self.restart_at[slot] = time.monotonic(), None
        return 0

    def _pause_after(self, slot: int, dead: BaseProcess) -> float:
        """Log a worker's death; when to start it again (at once, then after growing pauses
        while it keeps dying within STABLE_S of its start)."""
        lived = time.monotonic() - self.started[slot]
        self.deaths[slot] = 1 if lived >= STABLE_S else self.deaths[slot] + 1
        pause = RESTART_PAUSES[min(self.deaths[slot] - 1, len(RESTART_PAUSES) - 1)]
        log.warning(
            "worker %d (pid %s) exited with status %s after %.0f s; restarting it%s",
            slot, dead.pid, dead.exitcode, lived, f" in {pause:g} s" if pause else "",
        )  # fmt: skip
        return time.monotonic() + pause

    def _stop_all(self, grace_s: float = 30.0) -> None:
        """SIGTERM to every worker (each finishes its requests), SIGKILL after ``grace_s``."""
        self.stopping = True
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %s did not stop in %g s; killing it", process.pid, grace_s)
                process.kill()
                process.join()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def serve(host: str, port: int, workers: int, log_level: str) -> int:
    """Run ``workers`` processes of the app on ``host:port`` (the ``LEXVLA_*`` environment
    configures them); the exit status of ``lexvla serve``."""
    if not reuse_port_supported():
        import uvicorn

        uvicorn.run(
            "service.main:create_app", factory=True, workers=workers,
            host=host, port=port, log_level=log_level,
        )  # fmt: skip
        return 0
    try:
        held = reserve_port(host, port)
    except OSError as exc:
        print(f"lexvla serve: {exc}", file=sys.stderr)
        return 2
    with held:
        bound = held.getsockname()[1]
        log.info(
            "%d workers on http://%s:%d, one listening socket each (SO_REUSEPORT)",
            workers, host, bound,
        )  # fmt: skip
        return Supervisor(workers, run_worker, (host, bound, log_level)).run()
