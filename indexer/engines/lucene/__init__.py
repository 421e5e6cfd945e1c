"""The ``lucene`` engine: an Anserini impact index through pyjnius (Java needed at run time).

Package map: ``index.py`` (:class:`~indexer.engines.lucene.index.LuceneIndex`: quantised impacts,
Lucene's candidates re-scored from the float rows), ``jvm.py`` (starting the JVM, Anserini's
classes, Java's logging). This module declares the engine to the registry
(:class:`LuceneEngine`: options and hooks); it imports the index, and so pyjnius, only when an
index is created or opened.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from indexer.engines.base import SearchIndex
from indexer.engines.engine import BuildHints, Engine, EngineOptions

DEFAULT_SCALE = 100.0  # weights become integer impacts round(w * scale)


class LuceneBuildOptions(EngineOptions):
    scale: float = Field(default=DEFAULT_SCALE, gt=0, description="impact = round(w * scale)")
    rescore: bool = Field(default=True, description="re-score Lucene's hits from the float rows")
    candidates: int = Field(default=50, ge=1, description="Lucene hits re-scored at least")
    threads: int = Field(default=2, ge=1, description="Lucene searcher threads")


class LuceneOpenOptions(EngineOptions):
    mmap: bool = Field(default=True, description="memory-map the float rows")


class LuceneEngine(Engine):
    name = "lucene"
    summary = "Anserini impact index through pyjnius"
    build_options = LuceneBuildOptions
    open_options = LuceneOpenOptions

    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: LuceneBuildOptions,
        hints: BuildHints,
    ) -> SearchIndex:
        from indexer.engines.lucene.index import LuceneIndex

        return LuceneIndex.create(
            vocabulary_size, vocabulary_hash, checkpoint_id, threshold, options.scale,
            options.rescore, options.candidates, options.threads,
        )  # fmt: skip

    def open(self, version: Path, options: LuceneOpenOptions) -> SearchIndex:
        from indexer.engines.lucene.index import LuceneIndex

        return LuceneIndex.open(version, mmap=options.mmap)

    def quiet(self, verbose: bool) -> None:
        """Anserini's and Lucene's INFO lines (the JVM is not started for this)."""
        from indexer.engines.lucene.jvm import set_java_logging

        set_java_logging(verbose)


__all__ = ["DEFAULT_SCALE", "LuceneEngine"]
