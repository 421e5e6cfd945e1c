"""How much a pruned compact search reads (:class:`ImpactPruning`): plain settings, no kernels,
so the engine's options can name them without loading the compiled search."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImpactPruning:
    """How much a pruned search reads: a share of the query's postings, then the best partial
    scores re-scored completely. Both follow the query: the postings read are a share of what
    exact search would read, a share that falls slowly past ``long_words`` query words (as
    ``(long_words / words) ** falloff``: 0.08 at 300 words), and longer queries (whose scores
    gather more small contributions that were not read) keep more candidates. Defaults:
    bench/index_search.py at 1M images, where they give recall@10 >= 0.99 on both synthetic
    corpora for 30-300 query words (the falloff: 1,000 queries of 200 and 300 words on the
    structureless corpus, docs/benchmarks.md).
    """

    budget: float = 0.1  # share of the query's postings read, highest contributions first
    min_postings: int = 200_000  # but at least this many
    candidates: int = 300  # partial-score leaders re-scored: at least this many,
    per_word: float = 3.3  # ... this many per query word,
    max_candidates: int = 1000  # ... and at most this many
    long_words: int = 100  # queries longer than this read a smaller share: budget x
    falloff: float = 0.2  # (long_words / words) ** falloff

    def candidates_for(self, words: int, need: int) -> int:
        wanted = min(self.max_candidates, max(self.candidates, int(self.per_word * words)))
        return max(need, wanted)

    @classmethod
    def saved(cls, settings: dict[str, Any], where: str) -> ImpactPruning:
        """The settings an index was saved with; fields this version lacks are refused."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"{where} was saved with pruning settings this version of lexvla does not know "
                f"({', '.join(unknown)}): upgrade lexvla, or rebuild the index with this one"
            )
        return cls(**settings)

    def budget_for(self, words: int) -> float:
        """The share of its postings a query of ``words`` words reads."""
        if words <= self.long_words:
            return self.budget
        return self.budget * (self.long_words / words) ** self.falloff


DEFAULT_PRUNING = ImpactPruning()
