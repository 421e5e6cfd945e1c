"""The serving processes of one server and the index version each one serves.

Every worker of a ``lexvla serve --workers N`` server shares one run folder (``LEXVLA_RUN_DIR``;
the command makes a temporary one). Each process keeps a small status file there,
``processes/<pid>.json``, rewritten atomically whenever what it serves changes: the version, and
the last version it failed to open with the reason. Any process can then answer for all of them
(``/readyz``, ``POST /admin/reload``) without talking to the others: files of processes that are
gone are skipped (and removed by the server when it reaps them). A process without a run folder
(one worker, tests) reports itself alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from common.atomic import atomic_write_json, now_iso
from indexer.engines.versions import pid_alive

PROCESSES = "processes"


@dataclass(frozen=True)
class ProcessStatus:
    pid: int
    index_version: str | None
    since: str  # when it started serving that version
    error: str | None = None  # the last version it could not open, and why


class ProcessRegistry:
    """This process's status file in ``run_dir``, and the statuses of its live siblings."""

    def __init__(self, run_dir: str | Path | None, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        self.folder = Path(run_dir) / PROCESSES if run_dir is not None else None
        self.own: ProcessStatus | None = None

    def record(self, version: str | None, error: str | None = None) -> None:
        same_version = self.own is not None and self.own.index_version == version
        since = self.own.since if same_version and self.own is not None else now_iso()
        self.own = ProcessStatus(self.pid, version, since, error)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / f"{self.pid}.json", asdict(self.own))

    def statuses(self) -> list[ProcessStatus]:
        """Every live process's status (this one's included), by pid."""
        found = {self.own.pid: self.own} if self.own is not None else {}
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.json"):
                status = _read(path)
                if status is not None and status.pid != self.pid and pid_alive(status.pid):
                    found[status.pid] = status
        return [found[pid] for pid in sorted(found)]

    def forget(self, pid: int) -> None:
        """Remove the status of a process that is gone (the server's hook when it reaps one)."""
        if self.folder is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{pid}.json").unlink()


def _read(path: Path) -> ProcessStatus | None:
    try:
        return ProcessStatus(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # vanished or replaced as it was read
        return None
