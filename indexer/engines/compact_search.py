"""Search internals of the compact engine: word filters, the pruning plan, threaded scoring,
re-scoring and the page of hits.

The engine (:mod:`indexer.engines.compact`) hands a :class:`Snapshot` of its blocks to
:meth:`Scorer.search`; everything here only reads it, so searches run concurrently with writers.

Score-at-a-time over impact-ordered lists (as in JASS and PISA): every posting of a segment adds
the same contribution ``q_w * code * scale``, so a query reads, for each of its words, the segments
whose contribution reaches a threshold ``t``, highest first. ``t = 0`` reads everything: exact
search in quantised scores, the oracle of the pruned mode. Pruned search (:class:`ImpactPruning`)
picks ``t`` so that a share of the query's postings is read (the *budget*, planned on per-word code
histograms before anything is read), keeps the best ``candidates`` partial scores, and re-scores
them completely from the forward rows. The budget follows the query and the corpus (a share of what
exact search would read), and a query for which pruning would cost as much as reading everything is
searched exactly, so pruning is never slower than exact search. Recall against exact float32 search
is measured in bench/index_search.py. A word filter first narrows the snapshot's live masks; when
it leaves fewer images than reading the query's lists would cost (:meth:`Scorer.direct_limit`),
exactly those are re-scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines import block_kernels
from indexer.engines import impact_kernels as kernels
from indexer.engines.base import Hit
from indexer.engines.compact_block import MAX_ROWS, Block

CODES = kernels.CODES
RESCORE_COST = 3.0  # a forward entry re-scored (from DRAM) costs ~3 postings accumulated (measured)


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


@dataclass
class Snapshot:
    blocks: list[Block]
    scales: np.ndarray  # per block
    live: list[np.ndarray]  # per block, bool
    counts: np.ndarray  # V x 256 postings per (word, code), all blocks

    @property
    def values(self) -> np.ndarray:
        """Blocks x 256: the weight each code stands for in each block (cached)."""
        cached = self.__dict__.get("_values")
        if cached is None or len(cached) != len(self.scales):
            cached = (self.scales[:, None] * np.arange(CODES)[None, :]).astype(np.float32)
            self.__dict__["_values"] = cached
        return cached

    def id_of(self, doc: int) -> str:
        """The image id of document ``doc`` (block number << 16 | row)."""
        return bytes(self.blocks[doc >> 16].ids[doc & 0xFFFF]).decode("utf-8")

    def rows_of(self, docs: np.ndarray, vocabulary_size: int) -> sp.csr_matrix:
        """The dequantised forward rows of ``docs`` (block number << 16 | row), in that order:
        two compiled calls per block the docs lie in (lengths, then the rows in place)."""
        docs = np.asarray(docs, dtype=np.int64)
        lengths = np.zeros(len(docs), dtype=np.int64)
        present = sorted(set((docs >> 16).tolist()))
        for b in present:
            block_kernels.fill_row_lengths(docs, b, self.blocks[b].fwd_ptr, lengths)
        # int32 offsets where they fit, as scipy keeps them (int64 ones it scans and copies)
        small = int(lengths.sum()) < np.iinfo(np.int32).max
        indptr = np.zeros(len(docs) + 1, dtype=np.int32 if small else np.int64)
        np.cumsum(lengths, out=indptr[1:])
        words = np.empty(indptr[-1], dtype=np.int32)
        weights = np.empty(indptr[-1], dtype=np.float32)
        values = self.values
        for b in present:
            block = self.blocks[b]
            block_kernels.decode_block_rows(
                docs, b, block.fwd_gap_ptr, block.fwd_gaps, block.fwd_ptr, block.fwd_codes,
                values[b], indptr, words, weights,
            )  # fmt: skip
        return sp.csr_matrix((weights, words, indptr), shape=(len(docs), vocabulary_size))

    def filtered(self, filters: wf.WordFilter) -> tuple[Snapshot, int]:
        """The snapshot with the live masks narrowed to the images ``filters`` allow, and how
        many images that leaves."""
        filters.check(len(self.counts))  # counts has a row per vocabulary word
        live = [
            m & wf.allowed_by_lists(filters, block.rows, block.having)
            for block, m in zip(self.blocks, self.live, strict=True)
        ]
        return Snapshot(self.blocks, self.scales, live, self.counts), sum(
            int(m.sum()) for m in live
        )


class Scorer:
    """Runs the kernels of a search over up to ``threads`` threads (a pool shared by searches).

    One search alone splits its blocks over all the threads (latency); concurrent searches split
    the threads between them, down to one each, so that a loaded server spends its cores on
    searches rather than on handing work between threads (throughput).
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._scratch = threading.local()
        self._active = 0  # searches in flight

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def search(
        self,
        snap: Snapshot,
        words: np.ndarray,
        weights: np.ndarray,
        need: int,
        offset: int,
        filters: wf.WordFilter | None,
        settings: ImpactPruning | None,
    ) -> tuple[list[Hit], np.ndarray]:
        """Hits ``offset:need`` of a query (its words, their positive weights) in ``snap``
        among the images ``filters`` allow: pruned as ``settings`` plan it, or exact (None);
        and the hits' documents."""
        with self.searching():
            if wf.active(filters):
                assert filters is not None
                snap, allowed = snap.filtered(filters)
                if allowed <= self.direct_limit(snap, words):  # few: score them all
                    docs = np.concatenate(
                        [(b << 16) | np.flatnonzero(m) for b, m in enumerate(snap.live)]
                    )
                    return _page(snap, docs, self.rescore(snap, docs, words, weights), offset, need)
            threshold, capacity = self.plan(snap, words, weights, settings, need)
            heap_s, heap_d = self.score(snap, words, weights, threshold, capacity)
            if threshold > 0 and filters is not None and len(heap_d) < need:
                # a filter left too few partial scores to fill the page: read everything
                heap_s, heap_d = self.score(snap, words, weights, 0.0, need)
            elif threshold > 0:  # pruned: the partial scores only chose the candidates
                heap_s = self.rescore(snap, heap_d, words, weights)
            return _page(snap, heap_d, heap_s, offset, need)

    def _share(self) -> int:
        """Threads this search may use now."""
        return max(1, self.threads // max(1, self._active))

    def plan(
        self,
        snap: Snapshot,
        words: np.ndarray,
        weights: np.ndarray,
        settings: ImpactPruning | None,
        need: int,
    ) -> tuple[float, int]:
        """(contribution threshold, heap capacity): threshold 0 is exact search."""
        if settings is None:
            return 0.0, need
        candidates = settings.candidates_for(len(words), need)
        postings = sum(b.postings for b in snap.blocks)
        rows = sum(b.rows for b in snap.blocks)
        rescoring = candidates * RESCORE_COST * postings / max(rows, 1)
        reference = np.arange(CODES, dtype=np.float64) * float(snap.scales.max())
        threshold = kernels.plan_threshold(
            snap.counts, words, weights.astype(np.float64), reference,
            settings.budget_for(len(words)),
            settings.min_postings, rescoring,
        )  # fmt: skip
        if threshold <= 0:
            return 0.0, need  # reading everything is as cheap: exact
        return float(threshold), candidates

    def direct_limit(self, snap: Snapshot, words: np.ndarray) -> int:
        """How many images re-scoring one by one costs no more than reading the query's lists:
        a filter that leaves fewer is served by scoring exactly those."""
        postings = sum(b.postings for b in snap.blocks)
        rows = sum(b.rows for b in snap.blocks)
        per_row = RESCORE_COST * postings / max(rows, 1)
        return int(snap.counts[words].sum() / per_row)

    def score(
        self,
        snap: Snapshot,
        words: np.ndarray,
        weights: np.ndarray,
        threshold: float,
        capacity: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        groups = _split(snap.blocks, self._share())
        min_codes = _min_codes(threshold, weights, snap.scales)
        results = self._parallel(
            self._score_group, [(g, snap, words, weights, min_codes, capacity) for g in groups]
        )
        scores = np.concatenate([r[0] for r in results])
        docs = np.concatenate([r[1] for r in results])
        if len(scores) > capacity:
            best = np.lexsort((docs, -scores))[:capacity]
            scores, docs = scores[best], docs[best]
        return scores, docs

    def _score_group(
        self,
        group: list[int],
        snap: Snapshot,
        words: np.ndarray,
        weights: np.ndarray,
        min_codes: np.ndarray,
        capacity: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        acc = getattr(self._scratch, "acc", None)
        if acc is None:
            acc = self._scratch.acc = np.empty(MAX_ROWS, dtype=np.float32)
        heap_s = np.empty(capacity, dtype=np.float32)
        heap_d = np.empty(capacity, dtype=np.int64)
        size = 0
        values = snap.values
        for b in group:
            block = snap.blocks[b]
            size = kernels.score_block(
                block.post, block.post16, block.seg_code, block.seg_end, block.word_seg, values[b],
                words,
                weights, min_codes[b], snap.live[b], b << 16, acc, heap_s, heap_d, size,
            )  # fmt: skip
        return heap_s[:size], heap_d[:size]

    def rescore(
        self, snap: Snapshot, docs: np.ndarray, words: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        dense = np.zeros(len(snap.counts), dtype=np.float32)
        dense[words] = weights
        scores = np.empty(len(docs), dtype=np.float32)
        order = np.argsort(docs)  # by block, and by row within a block (forward rows in order)

        def rescore_part(part: np.ndarray) -> None:
            blocks = docs[part] >> 16
            for at in np.split(part, np.flatnonzero(np.diff(blocks)) + 1):
                b = int(docs[at[0]] >> 16)
                scores[at] = snap.blocks[b].rescore(docs[at] & 0xFFFF, snap.values[b], dense)

        parts = np.array_split(order, min(self._share(), max(1, len(order) // 64)))
        self._parallel(rescore_part, [(p,) for p in parts if len(p)])
        return scores

    def _parallel(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
        """``fn(*args)`` for each of ``calls``: the first in this thread, the rest in the pool."""
        if len(calls) <= 1:
            return [fn(*args) for args in calls]
        pool = self._executor()
        futures = [pool.submit(fn, *args) for args in calls[1:]]
        return [fn(*calls[0]), *(f.result() for f in futures)]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="compact")
            return self._pool


def _page(
    snap: Snapshot, docs: np.ndarray, scores: np.ndarray, offset: int, need: int
) -> tuple[list[Hit], np.ndarray]:
    """Hits ``offset:need`` by score (ties by document), scores of 0 left out; their documents."""
    keep = scores > 0
    docs, scores = docs[keep], scores[keep]
    order = np.lexsort((docs, -scores))[offset:need]
    return [(snap.id_of(int(docs[i])), float(scores[i])) for i in order], docs[order]


def _split(blocks: list[Block], parts: int) -> list[list[int]]:
    """Block numbers in at most ``parts`` contiguous groups of about equal rows."""
    if parts <= 1 or len(blocks) <= 1:
        return [list(range(len(blocks)))]
    rows = np.cumsum([b.rows for b in blocks])
    cuts = np.searchsorted(rows, rows[-1] * np.arange(1, parts) / parts, side="right")
    groups = [g.tolist() for g in np.split(np.arange(len(blocks)), np.unique(cuts))]
    return [g for g in groups if g]


def _min_codes(threshold: float, weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Blocks x query words: the lowest code whose contribution ``weight * code * scale``
    reaches the threshold (0: read all)."""
    if threshold <= 0:
        return np.zeros((len(scales), len(weights)), dtype=np.int64)
    codes = np.ceil(threshold / (scales[:, None] * weights.astype(np.float64)[None, :]) - 1e-9)
    return np.clip(codes, 0, CODES).astype(np.int64)
