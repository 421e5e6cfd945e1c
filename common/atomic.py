"""Crash-safe writes: write beside the target under a temporary name, fsync, rename into place.

``os.replace`` is atomic on POSIX within one file system, so a reader sees the old file or the
new one, never half of one. Files (:func:`atomic_write_bytes`, :func:`atomic_write_json`) are
used for store shards, manifests and index version pointers; whole directories
(:func:`replace_directory`) for model and training checkpoints and webdataset shards being
written. Temporary names start with a dot, so listings and shard globs never pick them up.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """The current UTC time, to the second, as ISO 8601 (the dates of manifests and records)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def temp_path(path: Path, tag: str = "tmp") -> Path:
    """A hidden temporary name beside ``path``, unique to this process."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


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
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a folder's files and folder entries, and the folder itself (best effort)."""
    for item in [*path.rglob("*"), path]:
        fsync_dir(item)  # opening read-only and fsyncing works for files and folders alike


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


def replace_directory(tmp: Path, final: Path) -> Path:
    """Move the complete folder ``tmp`` to ``final`` (replacing a folder there) once it is durable.

    An existing ``final`` is first renamed aside, so at every instant ``final`` is either the old
    complete folder or the new one; the old one is deleted last.
    """
    fsync_tree(tmp)
    if final.exists():
        old = temp_path(final, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return final
