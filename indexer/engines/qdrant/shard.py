"""Where an embedded index's Qdrant Edge shard lives, and whether the index may write it.

A published shard (in a version directory) is never written: the first write of an index opened
on one copies the shard into a scratch directory and goes on there (copy-on-write, like the
Lucene engine), a shard another process holds open (its WAL is locked) is read from a copy, and
:meth:`~indexer.engines.qdrant.index.QdrantIndex.save` moves the built shard into its version
directory. :class:`ShardHome` keeps that state for one index: the shard's directory, whether it
is the index's own copy, and the scratch directory removed with the index (by ``close``, or when
the index is collected unclosed), never a work or version directory.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from pathlib import Path

from indexer.engines.qdrant.backends import EdgeBackend

SHARD = "shard"  # the Qdrant Edge shard's directory in a version or scratch directory


def scratch_dir() -> Path:
    """A new temporary directory for a shard this process builds or copies."""
    return Path(tempfile.mkdtemp(prefix="lexvla-qdrant-"))


def open_shard(shard: Path) -> tuple[EdgeBackend, Path | None]:
    """The shard at ``shard``, and None; or, when another process has it open (its WAL is
    locked), a copy of it and the new scratch directory that holds the copy."""
    try:
        return EdgeBackend(shard), None
    except Exception as exc:  # the shard is open in another process (its WAL is locked)
        if "WAL" not in str(exc):
            raise
    scratch = scratch_dir()
    shutil.copytree(shard, scratch / SHARD)
    return EdgeBackend(scratch / SHARD), scratch


def copy_shard(backend: EdgeBackend, shard_dir: Path) -> Path:
    """Flush and close ``backend`` (the shard in ``shard_dir``) and copy the shard, lock files
    left out, into a new scratch directory; returns that directory (the copy is its ``SHARD``)."""
    scratch = scratch_dir()
    backend.flush()
    backend.close()
    shutil.copytree(shard_dir, scratch / SHARD, ignore=shutil.ignore_patterns("*.lock"))
    return scratch


def move_shard(backend: EdgeBackend, shard_dir: Path, target: Path) -> EdgeBackend:
    """Optimise, flush and close ``backend``, move its ``shard_dir`` to ``target`` and open it
    there; the directory it was in is removed when that leaves it empty."""
    backend.optimize()
    backend.flush()
    backend.close()
    shutil.move(str(shard_dir), str(target))  # a rename on one filesystem
    with contextlib.suppress(OSError):  # the work or temporary directory, now empty
        shard_dir.parent.rmdir()
    return EdgeBackend(target)


class ShardHome:
    """One index's shard directory: whether it is the index's own copy (writable), and the
    scratch directory to remove with it. Each method takes the index's current back end and
    returns the one to use from then on."""

    def __init__(self, path: Path, owned: bool, scratch: Path | None = None):
        self.path = path
        self.owned = owned
        self._scratch: weakref.finalize | None = None
        self.own_scratch(scratch)

    @classmethod
    def open(cls, shard: Path) -> tuple[EdgeBackend, ShardHome]:
        """A published shard, or a copy of it when another process has it open."""
        backend, scratch = open_shard(shard)
        return backend, cls(backend.path, owned=scratch is not None, scratch=scratch)

    def own_scratch(self, scratch: Path | None) -> None:
        """Make ``scratch`` the temporary directory removed with this object (None: keep all)."""
        if self._scratch is not None:
            self._scratch.detach()
        self._scratch = (
            None
            if scratch is None
            else weakref.finalize(self, shutil.rmtree, str(scratch), ignore_errors=True)
        )

    def writable(self, backend: EdgeBackend) -> EdgeBackend:
        """Copy-on-write: a published shard is copied once, then the copy is written."""
        if self.owned:
            return backend
        scratch = copy_shard(backend, self.path)
        self.path, self.owned = scratch / SHARD, True
        self.own_scratch(scratch)
        return EdgeBackend(self.path)

    def save(self, backend: EdgeBackend, version: Path) -> EdgeBackend:
        """Move the (written) shard into the version directory ``version``, which keeps it."""
        target = version / SHARD
        backend = move_shard(self.writable(backend), self.path, target)
        self.path, self.owned = target, False
        self.own_scratch(None)
        return backend

    def moved(self, backend: EdgeBackend, version: Path) -> EdgeBackend:
        """The version directory holding the shard was renamed to ``version`` (publish)."""
        backend.close()
        self.path = version / SHARD
        return EdgeBackend(self.path)

    def close(self) -> None:
        """Remove the scratch directory this object made, if any."""
        if self._scratch is not None:
            self._scratch()
