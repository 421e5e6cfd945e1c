"""Search engines behind one protocol (``base.SearchIndex``), and opening a published index.

``memory``: exact scipy engine (and the test oracle); ``compact``: quantised impact index,
memory-mapped, searched by compiled kernels on every core; ``lucene``: Anserini impact index;
``qdrant``: Qdrant, in-process (Qdrant Edge) or on a server/cluster. An index directory is
versioned (``versions.py``); :func:`open_index` opens its current version with the engine its
manifest names and refuses one built with another vocabulary. Options an engine's ``open`` does
not take are dropped, so a caller can pass every option it has (``mmap``, a Qdrant URL, ...).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from indexer.engines.base import IndexManifest, SearchIndex
from indexer.engines.versions import publish, resolve

ENGINES = ("memory", "compact", "lucene", "qdrant")
# bench/index_search.py, side by side at 100k and 1M images: docs/benchmarks.md says why
DEFAULT_ENGINE = "compact"

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "IndexManifest",
    "SearchIndex",
    "engine_class",
    "open_index",
    "publish",
]


def engine_class(name: str) -> Any:
    """The engine class for a manifest's engine name (Lucene is imported only when asked for)."""
    if name == "memory":
        from indexer.engines.memory.index import MemoryIndex

        return MemoryIndex
    if name == "compact":
        from indexer.engines.compact.index import CompactIndex

        return CompactIndex
    if name == "lucene":
        from indexer.engines.lucene.index import LuceneIndex

        return LuceneIndex
    if name == "qdrant":
        from indexer.engines.qdrant.index import QdrantIndex

        return QdrantIndex
    raise ValueError(f"unknown index engine {name!r}; known: {', '.join(ENGINES)}")


def open_index(path: str | Path, vocabulary_hash: str | None = None, **options: Any) -> SearchIndex:
    """Open the current version of an index directory (or a version directory itself)."""
    version = resolve(path)
    manifest = IndexManifest.load(version)
    if vocabulary_hash is not None:
        manifest.check_vocabulary(vocabulary_hash)
    opener = engine_class(manifest.engine).open
    accepted = inspect.signature(opener).parameters
    index: SearchIndex = opener(version, **{k: v for k, v in options.items() if k in accepted})
    return index
