"""The served index: which version, how it is opened, and how a new version is swapped in.

An index directory is versioned (``indexer.engines.versions``): batch jobs publish to
``CURRENT``, and an admin may pin another version (``PINNED``). The service holds one
:class:`IndexHandle` (the open index plus where it came from) in an :class:`IndexHolder`, and
every serving process follows the directory by itself (``ServiceState.follow``): when the version
it names differs from the one served, the holder opens the new one off the event loop, checks its
vocabulary, lets the caller warm it, then replaces the reference in one assignment. Each request
takes the current handle once, at its start, and uses it to the end, so requests in flight finish
on the old version; when the last of them lets go of the old handle it is closed
(``weakref.finalize``). A version that fails to open is never swapped in: the old one keeps
serving and the caller reports the failure.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import now_iso
from indexer.engines import open_index
from indexer.engines.base import SearchIndex
from indexer.engines.registry import options_by_engine
from indexer.engines.versions import (
    CURRENT,
    current_version,
    pinned,
    served_version,
    version_dir,
)
from indexer.store import CorpusStore


@dataclass(frozen=True)
class IndexHandle:
    index: SearchIndex
    version: str  # version directory name ("v0003"), or a label for an index passed in memory
    path: Path | None = None
    opened: str = field(default_factory=now_iso)

    @property
    def engine(self) -> str:
        return self.index.manifest.engine

    @property
    def exact(self) -> bool:
        """True when the engine's top-k and scores are exact float32 dot products."""
        return self.index.exact

    @property
    def exact_rows(self) -> bool:
        """True when the engine's ``vectors_of`` rows are the exact float rows."""
        return self.index.exact_rows

    def count(self) -> int:
        return self.index.count()


def index_options(settings: Any) -> dict[str, dict[str, Any]]:
    """Each engine's open options found in the settings, by engine name (the registry's
    outside names: ``qdrant_url`` is the qdrant engine's ``url``); the index's engine takes its
    own when the index is opened, so the settings need not know which engine that is. The
    compact engine's search threads default to this worker's share of the cores."""
    options = options_by_engine(settings, "open")
    compact = options.get("compact")
    if compact is not None and compact.get("threads") is None:
        compact["threads"] = search_threads(settings.workers)
    return options


def search_threads(workers: int) -> int:
    """Threads for one search in each of ``workers`` processes: the cores this process may run
    on, shared out so that the workers together do not run more threads than there are cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def open_handle(
    path: str | Path, vocabulary_hash: str, options: Mapping[str, Mapping[str, Any]] | None = None
) -> IndexHandle:
    """Open the version served from ``path`` (its pinned version, else its current one; or a
    version directory itself), checking its vocabulary.

    ``options``: open options by engine name (:func:`index_options`); an option the engine does
    not know is refused (``EngineOptionError``, a ValueError). Raises ``VocabularyMismatchError``
    (from ``model.vocabulary``) with a message naming both hashes when the index was built with
    another vocabulary than the model's, and ``IndexUnavailable`` when its server cannot be
    reached.
    """
    version = served_version(path)
    index = open_index(version, vocabulary_hash, per_engine=options)
    return IndexHandle(index, version.name, version)


def wrap_index(index: SearchIndex | IndexHandle, vocabulary_hash: str) -> IndexHandle:
    """An index object passed to ``create_app`` -> a handle (its vocabulary checked)."""
    handle = index if isinstance(index, IndexHandle) else IndexHandle(index, "in-memory")
    handle.index.manifest.check_vocabulary(vocabulary_hash)
    return handle


class IndexHolder:
    """The current :class:`IndexHandle`, replaced atomically by :meth:`swap`."""

    def __init__(
        self,
        handle: IndexHandle,
        source: Path | None,
        options: Mapping[str, Any] | None = None,
        on_closed: Callable[[str], None] | None = None,
    ):
        self.current = handle
        self.source = source  # the index directory whose CURRENT / PINNED the service follows
        # given an index directory (with CURRENT), not one version directory or an object
        self.follows = source is not None and (source / CURRENT).exists()
        self.options = dict(options or {})
        self.on_closed = on_closed  # called with a retired version's name once it is closed
        self._lock = asyncio.Lock()

    def wanted(self) -> str:
        """The version the index directory says to serve now (blocking file reads); raises
        ``FileNotFoundError`` or ``ValueError`` when it cannot say (``CURRENT`` gone, corrupt)."""
        if self.source is None:
            raise ValueError(
                "this service was given an index object, not a directory: nothing to follow "
                "(start it with LEXVLA_INDEX=<index directory>)"
            )
        if not self.follows:
            return self.current.version  # one version directory: nothing else to serve
        name = pinned(self.source)
        return name if name is not None else current_version(self.source).name

    async def swap(
        self,
        vocabulary_hash: str,
        version: str,
        warm: Callable[[IndexHandle], Awaitable[None]] | None = None,
    ) -> IndexHandle:
        """Open ``version``, warm it with ``warm``, and make it current (no-op if it is).

        Raises what opening raises (``FileNotFoundError``, ``ValueError`` for a vocabulary
        mismatch or a corrupt version, ``IndexUnavailable``); the current handle then stays."""
        assert self.source is not None
        async with self._lock:  # one swap at a time; searches never wait on this lock
            if version == self.current.version:
                return self.current
            path = version_dir(self.source, version)
            handle = await asyncio.to_thread(open_handle, path, vocabulary_hash, self.options)
            if warm is not None:
                await warm(handle)
            retired, self.current = self.current, handle
            weakref.finalize(retired, _close, retired.index, retired.version, self.on_closed)
            return handle


def _close(index: SearchIndex, version: str, on_closed: Callable[[str], None] | None) -> None:
    """Release a retired version's resources (runs when its last request lets go of it)."""
    index.close()
    if on_closed is not None:
        on_closed(version)


def open_store(path: str | Path, vocabulary: Any) -> CorpusStore:
    """Open the corpus store read-only in spirit (the service never writes to it)."""
    return CorpusStore.open(path, expected_vocabulary=vocabulary)
