"""Search internals of the compact engine: word filters, the pruning plan, threaded scoring,
re-scoring and the page of hits.

The engine (:mod:`indexer.engines.compact.index`) hands a :class:`Snapshot` of its blocks to
:meth:`Scorer.search`; everything here only reads it, so searches run concurrently with writers.

Score-at-a-time over impact-ordered lists (as in JASS and PISA): every posting of a segment adds
the same contribution ``q_w * code * scale``, so a query reads, for each of its words, the segments
whose contribution reaches a threshold ``t``, highest first. ``t = 0`` reads everything: exact
search in quantised scores, the oracle of the pruned mode. Pruned search (:class:`ImpactPruning`)
picks ``t`` so that a share of the query's postings is read (the *budget*, planned on per-word code
histograms before anything is read), keeps the best ``candidates`` partial scores, and re-scores
them completely from the forward rows. The budget follows the query and the corpus (a share of what
exact search would read), and a query is searched exactly whenever the pruned search's cost (the
postings it reads plus its own steps: planning, keeping and re-scoring the candidates, fixed
work, each priced in postings by :func:`pruned_overhead`) reaches the query's postings. Recall
against exact float32 search is measured in bench/index_search.py. A word filter, and a metadata
condition (a row mask per block from the version's metadata columns), first narrow the
snapshot's live masks; when they leave fewer images than reading the query's lists would cost
(:meth:`Scorer.direct_limit`), exactly those are re-scored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from indexer import filters as wf
from indexer.engines.base import Hit
from indexer.engines.compact import impact_kernels as kernels
from indexer.engines.compact.block import MAX_ROWS, Block
from indexer.engines.compact.pruning import ImpactPruning
from indexer.engines.compact.snapshot import Snapshot
from indexer.fields import FieldColumns, Where

CODES = kernels.CODES
# What a pruned search's own steps cost, in postings read by exact search, as
# bench/compact_costs.py fits them on end-to-end timings (exact and pruned searches of the same
# queries on the engine's threads; 5.2 and 6.1 per entry at 100k and 1M images, lab-notes.md).
RESCORE_COST = 6.0  # a forward entry of a candidate: keeping it, re-scoring it (DRAM-bound)
PLAN_COST = 500.0  # a query word planned (its code histogram, bisection)
PRUNED_COST = 0.0  # fixed work beyond exact search's (not told apart from the candidates')


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
        allowed: list[np.ndarray] | None = None,
    ) -> tuple[list[Hit], np.ndarray]:
        """Hits ``offset:need`` of a query (its words, their positive weights) in ``snap``
        among the images ``filters`` and ``allowed`` (a row mask per block: metadata
        conditions) allow: pruned as ``settings`` plan it, or exact (None); and the hits'
        documents."""
        narrowed = wf.active(filters) or allowed is not None
        with self.searching():
            if narrowed:
                snap, left = snap.filtered(filters, allowed)
                if left <= self.direct_limit(snap, words):  # few: score them all
                    docs = np.concatenate(
                        [(b << 16) | np.flatnonzero(m) for b, m in enumerate(snap.live)]
                    )
                    return _page(snap, docs, self.rescore(snap, docs, words, weights), offset, need)
            threshold, capacity = self.plan(snap, words, weights, settings, need)
            heap_s, heap_d = self.score(snap, words, weights, threshold, capacity)
            if threshold > 0 and narrowed and len(heap_d) < need:
                # a filter left too few partial scores to fill the page: read everything
                heap_s, heap_d = self.score(snap, words, weights, 0.0, need)
            elif threshold > 0:  # pruned: the partial scores only chose the candidates
                heap_s = self.rescore(snap, heap_d, words, weights)
            return _page(snap, heap_d, heap_s, offset, need)

    def matching(
        self,
        snap: Snapshot,
        words: np.ndarray,
        weights: np.ndarray,
        filters: wf.WordFilter | None,
        allowed: list[np.ndarray] | None,
        fields: FieldColumns,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every allowed image with a positive score, as (its row in ``fields``, its quantised
        score): exact scoring straight into arrays (no id decoded), block rows mapped to
        metadata rows by each block's cached lookup."""
        snap, left = snap.filtered(filters, allowed)
        with self.searching():
            scores, docs = self.score(snap, words, weights, 0.0, max(1, left))
        keep = scores > 0
        scores, docs = scores[keep], docs[keep]
        rows = np.empty(len(docs), dtype=np.int64)
        blocks = docs >> 16
        for b in np.unique(blocks).tolist():
            at = blocks == b
            rows[at] = fields.rows_of_array(snap.blocks[b].ids)[docs[at] & 0xFFFF]
        return rows[rows >= 0], scores[rows >= 0].astype(np.float64)

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
        total = int(snap.counts[words].sum())  # what exact search reads
        budget = max(settings.min_postings, int(settings.budget_for(len(words)) * total))
        overhead = pruned_overhead(len(words), candidates, snap.postings_per_row)
        if budget + overhead >= total:
            return 0.0, need  # pruning would cost as much as it saves: exact
        reference = np.arange(CODES, dtype=np.float64) * float(snap.scales.max())
        threshold = kernels.plan_threshold(
            snap.counts, words, weights.astype(np.float64), reference,
            settings.budget_for(len(words)), settings.min_postings, overhead,
        )  # fmt: skip
        if threshold <= 0:
            return 0.0, need
        return float(threshold), candidates

    def direct_limit(self, snap: Snapshot, words: np.ndarray) -> int:
        """How many images re-scoring one by one costs no more than reading the query's lists:
        a filter that leaves fewer is served by scoring exactly those."""
        per_row = RESCORE_COST * snap.postings_per_row
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


def where_masks(
    snap: Snapshot, fields: FieldColumns | None, where: Where | None
) -> list[np.ndarray] | None:
    """Each block's rows that pass ``where`` (None when there is no condition)."""
    if fields is None or where is None or where.empty:
        return None
    return [fields.allowed(where, block.ids) for block in snap.blocks]


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


def pruned_overhead(words: int, candidates: int, row_length: float) -> float:
    """What a pruned search costs beyond the postings it reads, in postings: planning the
    query's words, keeping and re-scoring ``candidates`` forward rows of ``row_length``
    entries, and its fixed work."""
    return PRUNED_COST + PLAN_COST * words + RESCORE_COST * candidates * row_length
