"""Versioned index directories: a reader never sees a half-written index.

Layout::

    index_dir/CURRENT              one line: the live version's name, e.g. "v0003"
    index_dir/PINNED               optional, one line: the version servers serve instead
    index_dir/versions/v0003/      a complete index (engine files + index.json)

:func:`publish` saves a new version under a temporary name, fsyncs it, renames it to its final
name, then replaces ``CURRENT`` (temporary file + ``os.replace``, atomic on POSIX). A crash at any
point leaves ``CURRENT`` naming a complete version. Readers resolve ``CURRENT`` once when they open
an index; a server can re-resolve it to pick up a new version (hot swap) without a restart.
Old versions are kept until :func:`prune` removes them (a reader may still have one open).

``CURRENT`` is what batch jobs build on and publish to. What servers serve is
:func:`served_version`: the version ``PINNED`` names while it exists (an operator's rollback or
hold, :func:`pin`, written atomically like ``CURRENT``), else ``CURRENT``'s. Every serving
process re-reads it on its own, so one file decides what all of them serve.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from common.atomic import atomic_write_bytes, fsync_dir
from indexer.engines.base import MANIFEST, SearchIndex

CURRENT = "CURRENT"
PINNED = "PINNED"
VERSIONS = "versions"
FIELDS = "fields"  # a version's metadata columns (indexer.fields.columns)
WRITE_LOCK = ".write.lock"
_THREAD_LOCKS: dict[str, threading.Lock] = {}
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


def version_dir(index_dir: str | Path, name: str) -> Path:
    """The directory of version ``name``; ValueError for a malformed name, FileNotFoundError
    for a version that is missing or incomplete."""
    if not _VERSION.fullmatch(name):
        raise ValueError(f"{name!r} is not a version name (like 'v0003')")
    path = Path(index_dir) / VERSIONS / name
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no index version {name!r} under {index_dir} (or it is incomplete)"
        )
    return path


def pinned(index_dir: str | Path) -> str | None:
    """The version ``PINNED`` names, or None when servers follow ``CURRENT``."""
    pointer = Path(index_dir) / PINNED
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION.fullmatch(name):
        raise ValueError(f"{pointer} is corrupt: {name!r} is not a version name")
    return name


def pin(index_dir: str | Path, name: str) -> Path:
    """Make every server serve version ``name`` (until :func:`unpin`); returns its directory."""
    path = version_dir(index_dir, name)
    atomic_write_bytes(Path(index_dir) / PINNED, f"{name}\n".encode())
    fsync_dir(Path(index_dir))
    return path


def unpin(index_dir: str | Path) -> bool:
    """Servers follow ``CURRENT`` again; True if a pin was removed."""
    try:
        (Path(index_dir) / PINNED).unlink()
    except FileNotFoundError:
        return False
    fsync_dir(Path(index_dir))
    return True


def served_version(path: str | Path) -> Path:
    """What a server serves from ``path``: an index directory's pinned version, else its
    current one; a version directory itself."""
    path = Path(path)
    if not (path / CURRENT).exists():
        return path
    name = pinned(path)
    return version_dir(path, name) if name is not None else current_version(path)


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
    if index.fields is not None:
        index.fields.save(tmp / FIELDS)
    previous = versions / existing[-1] if existing else None
    for entry in [tmp, *tmp.rglob("*")]:  # every folder's entries and every new file
        if entry.is_file() and _linked_from(entry, tmp, previous):
            continue
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    final = versions / name
    os.rename(tmp, final)  # fails, rather than merging, if another writer took the name
    index.moved(final)  # an engine serving from the files it saved follows them
    if index.fields is not None:
        index.fields.moved(final / FIELDS)
    fsync_dir(versions)
    atomic_write_bytes(index_dir / CURRENT, f"{name}\n".encode())
    fsync_dir(index_dir)
    return final


@contextlib.contextmanager
def write_lock(directory: str | Path) -> Iterator[None]:
    """Exclusive right to write ``directory`` (an index directory, or a corpus store): the
    threads of this process one after another, then processes, through ``flock`` on its
    ``.write.lock`` (released by the kernel when a process dies, so a crash never leaves it
    held). Live writes and batch builds take it around what they publish."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = _THREAD_LOCKS.setdefault(str(directory.resolve()), threading.Lock())
    with lock:
        fd = os.open(directory / WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _linked_from(file: Path, tmp: Path, previous: Path | None) -> bool:
    """True when ``file`` is a hard link of the same file of the previous version, whose data
    was synced when that version was published (engines link their unchanged files)."""
    if previous is None:
        return False
    try:
        return os.path.samestat(file.stat(), (previous / file.relative_to(tmp)).stat())
    except FileNotFoundError:
        return False


def prune(index_dir: str | Path, keep: int = 2) -> list[str]:
    """Remove all but the newest ``keep`` versions (never the current or pinned one); returns
    removed."""
    index_dir = Path(index_dir)
    live = {current_version(index_dir).name, pinned(index_dir)}
    removable = [v for v in list_versions(index_dir)[:-keep] if v not in live] if keep else []
    for name in removable:
        shutil.rmtree(index_dir / VERSIONS / name)
    for leftover in (index_dir / VERSIONS).glob(".tmp-*"):  # from crashed publishes
        if not pid_alive(int(leftover.name.rsplit("-", 1)[-1])):
            shutil.rmtree(leftover, ignore_errors=True)
    return removable


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
