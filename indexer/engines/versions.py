"""Versioned index directories: a reader never sees a half-written index.

Layout::

    index_dir/CURRENT              one line: the live version's name, e.g. "v0003"
    index_dir/versions/v0003/      a complete index (engine files + index.json)

:func:`publish` saves a new version under a temporary name, fsyncs it, renames it to its final
name, then replaces ``CURRENT`` (temporary file + ``os.replace``, atomic on POSIX). A crash at any
point leaves ``CURRENT`` naming a complete version. Readers resolve ``CURRENT`` once when they open
an index; a server can re-resolve it to pick up a new version (hot swap) without a restart.
Old versions are kept until :func:`prune` removes them (a reader may still have one open).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from indexer.engines.base import MANIFEST, SearchIndex
from model.data.atomic import atomic_write_bytes, fsync_dir

CURRENT = "CURRENT"
VERSIONS = "versions"
_VERSION = re.compile(r"v(\d{4,})")


def list_versions(index_dir: str | Path) -> list[str]:
    """Complete versions, oldest first."""
    folder = Path(index_dir) / VERSIONS
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _VERSION.fullmatch(p.name)]
    return sorted(names, key=lambda n: int(n[1:]))


def current_version(index_dir: str | Path) -> Path:
    """Directory of the live version; FileNotFoundError if there is none."""
    index_dir = Path(index_dir)
    pointer = index_dir / CURRENT
    if not pointer.is_file():
        raise FileNotFoundError(f"no index at {index_dir} (missing {CURRENT})")
    name = pointer.read_text().strip()
    if not _VERSION.fullmatch(name):
        raise ValueError(f"{pointer} is corrupt: {name!r} is not a version name")
    path = index_dir / VERSIONS / name
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{pointer} names {name}, which is missing or incomplete")
    return path


def resolve(path: str | Path) -> Path:
    """An index directory (with CURRENT) or a version directory -> the version directory."""
    path = Path(path)
    return current_version(path) if (path / CURRENT).exists() else path


def publish(index: SearchIndex, index_dir: str | Path) -> Path:
    """Save ``index`` as the next version of ``index_dir`` and make it current."""
    index_dir = Path(index_dir)
    versions = index_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    existing = list_versions(index_dir)
    number = int(existing[-1][1:]) + 1 if existing else 1
    name = f"v{number:04d}"
    tmp = versions / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    index.save(tmp)
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    final = versions / name
    os.rename(tmp, final)  # fails, rather than merging, if another writer took the name
    index.moved(final)  # an engine serving from the files it saved follows them
    fsync_dir(versions)
    atomic_write_bytes(index_dir / CURRENT, f"{name}\n".encode())
    fsync_dir(index_dir)
    return final


def prune(index_dir: str | Path, keep: int = 2) -> list[str]:
    """Remove all but the newest ``keep`` versions (never the current one); returns removed."""
    index_dir = Path(index_dir)
    live = current_version(index_dir).name
    removable = [v for v in list_versions(index_dir)[:-keep] if v != live] if keep else []
    for name in removable:
        shutil.rmtree(index_dir / VERSIONS / name)
    for leftover in (index_dir / VERSIONS).glob(".tmp-*"):  # from crashed publishes
        if not _pid_alive(int(leftover.name.rsplit("-", 1)[-1])):
            shutil.rmtree(leftover, ignore_errors=True)
    return removable


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
