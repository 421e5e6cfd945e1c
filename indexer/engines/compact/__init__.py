"""The ``compact`` engine (the default): a quantised impact index, memory-mapped, searched by
compiled kernels on every core; ``docs/compact.md`` describes it.

Package map:

- ``index.py``: :class:`~indexer.engines.compact.index.CompactIndex` (writes, blocks, saving and
  opening); ``warmup.py``: ``compile_kernels``, every kernel compiled ahead of a first search;
- ``snapshot.py``: the engine's state (blocks, scales, live masks) that searches read;
- ``search.py``: pruning plan, threaded scoring and re-scoring over a snapshot;
- ``pruning.py``: :class:`~indexer.engines.compact.pruning.ImpactPruning` (plain settings);
- ``block.py``: one immutable block and its files; ``files.py``: the blocks of a version on
  disk; ``merge.py``: tiered merges of small blocks, and a build's shape after writes;
- ``block_kernels.py``, ``impact_kernels.py``, ``prefetch.py``: the numba kernels.

This module declares the engine to the registry (:class:`CompactEngine`: options and hooks); it
imports the index, and so numba, only when an index is created or opened.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from indexer.engines.base import SearchIndex
from indexer.engines.compact.pruning import DEFAULT_PRUNING, ImpactPruning
from indexer.engines.engine import BuildHints, Engine, EngineOptions


class CompactBuildOptions(EngineOptions):
    pruning: ImpactPruning | None = Field(
        default=DEFAULT_PRUNING,
        description="pruned search settings as JSON, saved with the index (null: exact search)",
    )
    threads: int | None = Field(
        default=None, ge=1, description="search threads of the built index (default: all cores)"
    )


class CompactOpenOptions(EngineOptions):
    mmap: bool = Field(default=True, description="memory-map the blocks (else read them)")
    threads: int | None = Field(
        default=None, ge=1, description="search threads (default: the host's cores)"
    )
    populate: bool = Field(default=True, description="map every page at open")


class CompactEngine(Engine):
    name = "compact"
    summary = "quantised impact index, memory-mapped, compiled kernels"
    build_options = CompactBuildOptions
    open_options = CompactOpenOptions

    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: CompactBuildOptions,
        hints: BuildHints,
    ) -> SearchIndex:
        from indexer.engines.compact.index import CompactIndex

        return CompactIndex.create(
            vocabulary_size, vocabulary_hash, checkpoint_id, threshold, options.pruning,
            hints.expected_rows, options.threads, hints.spill_dir,
        )  # fmt: skip

    def open(self, version: Path, options: CompactOpenOptions) -> SearchIndex:
        from indexer.engines.compact.index import CompactIndex

        return CompactIndex.open(version, options.mmap, options.threads, options.populate)


__all__ = ["CompactEngine", "ImpactPruning"]
