"""The ``memory`` engine: exact float32 search with scipy, the oracle the other engines are
tested against (optionally pruned: :class:`~indexer.engines.memory.search.Pruning`).

Package map: ``index.py`` (:class:`~indexer.engines.memory.index.MemoryIndex`: rows, writes,
saving and opening), ``search.py`` (exact and pruned scoring, :class:`Pruning`). This module
declares the engine to the registry (:class:`MemoryEngine`: options and hooks); it imports the
index only when an index is created or opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from indexer.engines.base import SearchIndex
from indexer.engines.engine import BuildHints, Engine, EngineOptions
from indexer.engines.memory.search import Pruning


class MemoryBuildOptions(EngineOptions):
    pruning: Pruning | None = Field(
        default=None, description="approximate search settings as JSON (null: exact search)"
    )


class MemoryOpenOptions(EngineOptions):
    external: ClassVar[dict[str, str]] = {"mmap": "mmap"}  # the service's LEXVLA_MMAP

    mmap: bool = Field(default=False, description="memory-map the memory engine's arrays")


class MemoryEngine(Engine):
    name = "memory"
    summary = "exact float32 search with scipy, the oracle"
    build_options = MemoryBuildOptions
    open_options = MemoryOpenOptions

    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: MemoryBuildOptions,
        hints: BuildHints,
    ) -> SearchIndex:
        from indexer.engines.memory.index import MemoryIndex

        return MemoryIndex.create(
            vocabulary_size, vocabulary_hash, checkpoint_id, threshold, options.pruning
        )

    def open(self, version: Path, options: MemoryOpenOptions) -> SearchIndex:
        from indexer.engines.memory.index import MemoryIndex

        return MemoryIndex.open(version, mmap=options.mmap)


__all__ = ["MemoryEngine", "Pruning"]
