"""The served index: which version, how it is opened, and how a new version is swapped in.

An index directory is versioned (``indexer.engines.versions``: ``CURRENT`` names the live
version). The service holds one :class:`IndexHandle` (the open index plus where it came from).
Each request takes the current handle once, at its start, and uses it to the end; a reload opens
the new version off the event loop, checks its vocabulary, then replaces the reference in one
assignment. Requests in flight keep the old handle (and so finish on the old version); the old
index is freed when the last of them lets go of it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.engines import open_index
from indexer.engines.base import SearchIndex
from indexer.engines.registry import options_by_engine
from indexer.engines.versions import VERSIONS, resolve
from indexer.store import CorpusStore
from model.data.atomic import now_iso

VERSION_NAME = re.compile(r"v\d{4,}")


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
    own when the index is opened, so the settings need not know which engine that is."""
    return options_by_engine(settings, "open")


def open_handle(
    path: str | Path, vocabulary_hash: str, options: Mapping[str, Mapping[str, Any]] | None = None
) -> IndexHandle:
    """Open the current version under ``path`` (or a version directory), checking its vocabulary.

    ``options``: open options by engine name (:func:`index_options`); an option the engine does
    not know is refused (``EngineOptionError``, a ValueError). Raises ``VocabularyMismatchError``
    (from ``model.vocabulary``) with a message naming both hashes when the index was built with
    another vocabulary than the model's, and ``IndexUnavailable`` when its server cannot be
    reached.
    """
    version_dir = resolve(path)
    index = open_index(version_dir, vocabulary_hash, per_engine=options)
    return IndexHandle(index, version_dir.name, version_dir)


def wrap_index(index: SearchIndex | IndexHandle, vocabulary_hash: str) -> IndexHandle:
    """An index object passed to ``create_app`` -> a handle (its vocabulary checked)."""
    handle = index if isinstance(index, IndexHandle) else IndexHandle(index, "in-memory")
    handle.index.manifest.check_vocabulary(vocabulary_hash)
    return handle


class IndexHolder:
    """The current :class:`IndexHandle`, replaced atomically by :meth:`reload`."""

    def __init__(
        self, handle: IndexHandle, source: Path | None, options: Mapping[str, Any] | None = None
    ):
        self.current = handle
        self.source = source  # the index directory a reload re-resolves
        self.options = dict(options or {})
        self._lock = asyncio.Lock()

    async def reload(self, vocabulary_hash: str, version: str | None = None) -> IndexHandle:
        """Open ``version`` (default: whatever ``CURRENT`` names now) and make it current."""
        if self.source is None:
            raise ValueError(
                "this service was given an index object, not a directory: nothing to reload "
                "(start it with LEXVLA_INDEX=<index directory>)"
            )
        target = self.source
        if version is not None:
            if not VERSION_NAME.fullmatch(version):
                raise ValueError(f"{version!r} is not a version name (like 'v0003')")
            target = self.source / VERSIONS / version
            if not target.is_dir():
                raise FileNotFoundError(f"no index version {version!r} under {self.source}")
        async with self._lock:  # one reload at a time; searches never wait on this lock
            handle = await asyncio.to_thread(open_handle, target, vocabulary_hash, self.options)
            self.current = handle
            return handle


def open_store(path: str | Path, vocabulary: Any) -> CorpusStore:
    """Open the corpus store read-only in spirit (the service never writes to it)."""
    return CorpusStore.open(path, expected_vocabulary=vocabulary)
