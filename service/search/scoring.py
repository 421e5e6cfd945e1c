"""Search with exact scores and per-word contributions.

A LexVLA score is a sparse dot product, ``s = sum_j q_j d_j``, so every hit is explained by its
matched words' contributions ``q_j d_j``. The engine proposes hits; this module fetches their
rows and computes the contributions in float64, and a hit's reported score *is* their sum (so the
two always agree, whatever the engine's own arithmetic).

Engines whose top-k is not exact (``index.exact`` False: the Lucene impact index, pruned memory
search, Qdrant with float16/uint8 values) are asked for ``rescore_factor`` times as many
candidates as the page needs; the candidates are re-scored exactly from float rows and
re-sorted, and the page is cut from that order. Exact engines are paged directly. Float rows come
from the engine when its rows are the exact floats (``index.exact_rows``), else from the corpus
store. Word filters go to the engine, which applies them before its top-k. An engine whose
server is unavailable (``IndexUnavailable``) makes the request a 503 with the engine's message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from indexer.engines.base import IndexUnavailable
from indexer.filters import WordFilter
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary
from service.core.errors import NotFound, Unavailable
from service.search.indexes import IndexHandle

MAX_CANDIDATES = 20_000


@dataclass(frozen=True)
class Contribution:
    index: int  # vocabulary index
    word: str
    query_weight: float
    image_weight: float
    contribution: float


@dataclass
class ScoredHit:
    id: str
    score: float
    matched: list[Contribution]
    other_words: int = 0  # matched words left out of ``matched`` (matched_limit)
    other_contribution: float = 0.0  # their summed contribution


@dataclass
class SearchOutcome:
    hits: list[ScoredHit]
    search_ms: float
    rescore_ms: float
    candidates: int
    notes: list[str] = field(default_factory=list)


def dense_query(query: sp.csr_matrix) -> np.ndarray:
    q = np.zeros(query.shape[1], dtype=np.float64)
    q[query.indices] = query.data
    return q


def contributions(
    q: np.ndarray, indices: np.ndarray, data: np.ndarray, vocabulary: Vocabulary
) -> list[Contribution]:
    """Matched words of one image row (``indices``/``data``), largest contribution first."""
    qw = q[indices]
    hit = qw > 0
    idx, qv, dv = indices[hit], qw[hit], data[hit].astype(np.float64)
    values = qv * dv
    order = np.lexsort((idx, -values))
    return [
        Contribution(
            int(idx[i]), vocabulary.words[int(idx[i])], float(qv[i]), float(dv[i]), float(values[i])
        )
        for i in order
    ]


def explain_row(
    query: sp.csr_matrix, row: sp.csr_matrix, vocabulary: Vocabulary, limit: int | None = None
) -> ScoredHit:
    """Score and contributions of one image row (the ``id`` is filled in by the caller)."""
    all_matched = contributions(dense_query(query), row.indices, row.data, vocabulary)
    return _hit("", all_matched, limit)


def _hit(image_id: str, matched: list[Contribution], limit: int | None) -> ScoredHit:
    # summed smallest first, so the total does not depend on where the list is cut
    score = float(sum(c.contribution for c in reversed(matched)))
    if limit is None or limit >= len(matched):
        return ScoredHit(image_id, score, matched)
    rest = matched[limit:]
    other = float(sum(c.contribution for c in reversed(rest)))
    return ScoredHit(image_id, score, matched[:limit], len(rest), other)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """An engine server that is down, slow or refusing the key -> 503 with its message."""
    try:
        yield
    except IndexUnavailable as exc:
        raise Unavailable(f"the index is unavailable: {exc}") from None


def row_vectors(handle: IndexHandle, store: CorpusStore | None, ids: list[str]) -> sp.csr_matrix:
    """Float rows of ``ids``: the engine's when they are exact, else the corpus store's."""
    if not handle.exact_rows and store is not None:
        try:
            return store.vectors_of(ids)
        except KeyError:
            pass  # the index knows images the store does not (yet)
    with engine_errors():
        return handle.index.vectors_of(ids)


def search(
    handle: IndexHandle,
    store: CorpusStore | None,
    vocabulary: Vocabulary,
    query: sp.csr_matrix,
    *,
    top_k: int,
    offset: int = 0,
    min_score: float = 0.0,
    matched_limit: int | None = None,
    rescore_factor: int = 4,
    filters: WordFilter | None = None,
) -> SearchOutcome:
    """Top ``top_k`` hits after ``offset`` with exact scores >= ``min_score`` (runs in a thread)."""
    if query.nnz == 0:
        note = "the query has no active vocabulary words, so nothing can match"
        return SearchOutcome([], 0.0, 0.0, 0, [note])
    start = time.perf_counter()
    with engine_errors():
        if handle.exact:
            found = handle.index.search(query, top_k, offset, filters)
        else:
            want = min(MAX_CANDIDATES, (offset + top_k) * rescore_factor)
            found = handle.index.search(query, want, 0, filters)
    searched = time.perf_counter()
    ids = [i for i, _ in found]
    hits: list[ScoredHit] = []
    if ids:
        rows = row_vectors(handle, store, ids)
        q = dense_query(query)
        if not handle.exact:  # exact re-scoring of every candidate, then the page
            exact = np.asarray(rows.astype(np.float64) @ q).ravel()
            order = np.lexsort((np.arange(len(ids)), -exact))[offset : offset + top_k]
            rows, ids = rows[order], [ids[i] for i in order]
        for n, image_id in enumerate(ids):
            a, b = rows.indptr[n], rows.indptr[n + 1]
            matched = contributions(q, rows.indices[a:b], rows.data[a:b], vocabulary)
            hits.append(_hit(image_id, matched, matched_limit))
        hits.sort(key=lambda h: -h.score)  # stable: engine order breaks float-level ties
        hits = [h for h in hits if h.score >= min_score]
    done = time.perf_counter()
    return SearchOutcome(hits, (searched - start) * 1e3, (done - searched) * 1e3, len(found))


def image_row(
    handle: IndexHandle,
    store: CorpusStore | None,
    image_id: str,
    loc: tuple[str, ...] = ("body", "image_id"),
) -> sp.csr_matrix:
    """The lexical row of one indexed image; NotFound if the index does not hold it."""
    try:
        return row_vectors(handle, store, [image_id])
    except KeyError:
        raise NotFound(
            f"no image {image_id!r} in the index (version {handle.version})", loc=loc
        ) from None
