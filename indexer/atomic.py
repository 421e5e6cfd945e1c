"""Crash-safe file writes: write a temporary file beside the target, fsync, rename into place.

``os.replace`` is atomic on POSIX within one file system, so a reader sees the old file or the new
one, never half of one. Used for store shards and manifests and for index version pointers.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """The current UTC time, to the second, as ISO 8601 (the dates of manifests and records)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def temp_path(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())
