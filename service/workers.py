"""``lexvla serve --workers N``: N server processes on one port, managed by gunicorn.

gunicorn's arbiter starts the workers, replaces one that dies or hangs (a worker whose event
loop has not reported for ``LEXVLA_WORKER_TIMEOUT_S`` is killed) and stops them on SIGTERM,
each finishing its requests. A restart that answers every request is gunicorn's live upgrade:
SIGUSR2 starts a new arbiter and workers beside the old ones, and once they answer, SIGTERM to
the old arbiter (SIGHUP instead stops the old workers as soon as the new ones are forked, so
nothing answers while they load the model). Every worker runs the
app under uvicorn (``uvicorn_worker.UvicornWorker``) on a listening socket of its own:
gunicorn's ``reuse_port`` makes each worker bind the port with ``SO_REUSEPORT``, and the kernel
spreads new connections over the sockets by a hash of their addresses. (On one shared socket,
whichever worker wakes first accepts every waiting connection: a client's pool of kept-alive
connections then lands mostly on one worker.)

What is ours: :class:`ServiceWorker` reports to the arbiter from its event loop while the app
starts, so loading a large model is not mistaken for a hang; the server's run folder
(``LEXVLA_RUN_DIR``) where the workers keep their status (:mod:`service.core.processes`) and
their metrics (``PROMETHEUS_MULTIPROC_DIR``); and :func:`child_exit`, which clears a dead
worker's files. ``lexvla serve`` checks the settings, model and index first, then replaces its
process with :func:`main` (``python -m service.workers``), so the arbiter starts with no model or
torch threads loaded and forks clean workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from service.core.metrics import MULTIPROC_ENV

RUN_DIR_ENV = "LEXVLA_RUN_DIR"
GRACEFUL_TIMEOUT_S = 30  # a stopping worker's time to finish its requests
BACKLOG = 2048  # pending connections per worker socket


class PortInUse(OSError):
    """The address is taken by another program (one line, for the command's message)."""


def check_port(host: str, port: int) -> int:
    """The port to serve on: ``port``, or a free one for 0. A port another program uses is
    refused (:class:`PortInUse`), also one whose sockets have ``SO_REUSEPORT`` (another
    ``lexvla serve``): the workers would silently share its traffic. The check binds the port
    plainly, without ``SO_REUSEPORT``."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        return int(probe.getsockname()[1])


def prepare_run_dir(run_dir: str | Path | None) -> Path:
    """The server's run folder (a new temporary one when not given), with an empty metrics
    folder: prometheus_client's files of an earlier server must not be summed into this one's."""
    folder = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="lexvla-serve-"))
    for name in ("metrics", "processes"):
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        for stale in sub.iterdir():
            stale.unlink()
    return folder


class ServiceWorker(UvicornWorker):
    """uvicorn under gunicorn, reporting to the arbiter from the event loop from the start.

    uvicorn reports only once the app has started; a model that takes longer than the timeout
    to load would have the worker killed as hung. The lifespan loads in threads, so the loop
    stays free, and a loop that stops answering still stops the reports."""

    async def _serve(self) -> None:
        beat = asyncio.create_task(self._heartbeat())
        try:
            await super()._serve()
        finally:
            beat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            self.notify()
            await asyncio.sleep(max(0.1, self.timeout / 4))


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (in the arbiter): a worker is gone; drop its status and live gauges."""
    from prometheus_client import multiprocess

    from service.core.processes import ProcessRegistry

    ProcessRegistry(os.environ[RUN_DIR_ENV]).forget(worker.pid)
    multiprocess.mark_process_dead(worker.pid)


def gunicorn_options(settings: Any) -> dict[str, Any]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return {
        "bind": [f"{host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": "service.workers.ServiceWorker",
        "reuse_port": True,
        "timeout": settings.worker_timeout_s,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "keepalive": 5,  # uvicorn's default keep-alive
        "backlog": BACKLOG,
        "loglevel": settings.log_level,
        "proc_name": "lexvla-serve",
        "child_exit": child_exit,
    }


class ServiceApplication(BaseApplication):
    """gunicorn's embedding API: our options, and the app made from the ``LEXVLA_*``
    environment in each worker."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from service.core.config import Settings
        from service.main import create_app

        return create_app(Settings())


def main() -> None:
    """The server process (``python -m service.workers``): settings from ``LEXVLA_*``."""
    from indexer.quiet import quiet_libraries
    from service.core.config import Settings

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries(verbose=settings.log_level == "debug")
    if RUN_DIR_ENV not in os.environ or MULTIPROC_ENV not in os.environ:
        sys.exit(f"{__name__}: start it with lexvla serve --workers N")
    if os.environ.get("GUNICORN_FD") == "":
        # started by SIGUSR2 (a live upgrade) of a reuse_port arbiter, which holds no sockets
        # to hand over: gunicorn 27 then passes an empty list that its new arbiter cannot
        # parse. Each worker binds its own socket anyway, so start as a fresh arbiter.
        del os.environ["GUNICORN_FD"]
        os.environ.pop("GUNICORN_PID", None)
    ServiceApplication(gunicorn_options(settings)).run()


if __name__ == "__main__":
    main()
