"""Search with exact scores and per-word contributions (used by the service and `lexvla search`).

A LexVLA score is a sparse dot product, ``s = sum_j q_j d_j``, so every hit is explained by its
matched words' contributions ``q_j d_j``. The engine proposes hits; this module fetches their
rows and computes the contributions in float64, and a hit's reported score *is* their sum (so the
two always agree, whatever the engine's own arithmetic).

Engines whose top-k is not exact (``index.exact`` False: the compact engine's quantised scores,
the Lucene impact index, pruned memory search, Qdrant with float16/uint8 values) are asked for
``rescore_factor`` times as many candidates as the page needs; the candidates are re-scored
exactly from float rows and re-sorted, and the page is cut from that order. Exact engines are
paged directly. Float rows come from the engine when its rows are the exact floats
(``index.exact_rows``) or no store is given (the service's ``exact_scores`` false), else from the
corpus store. An engine that ranks by exactly the rows it returns (``index.ranks_by_rows``: the
compact engine's quantised rows) is paged directly when its rows are used, since re-scoring them
would change nothing. Word filters go to the engine, which applies them before its top-k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from indexer import scoring_kernels as kernels
from indexer.engines.base import SearchIndex
from indexer.filters import WordFilter
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary

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


def is_exact(index: SearchIndex) -> bool:
    """True when the engine's top-k and scores are exact float32 dot products."""
    return index.exact


def top_words(
    row: sp.csr_matrix, vocabulary: Vocabulary, limit: int | None = None
) -> list[tuple[str, float]]:
    """(word, weight) of a 1 x V row, heaviest first (ties by index)."""
    order = np.lexsort((row.indices, -row.data))
    if limit is not None:
        order = order[:limit]
    return [(vocabulary.words[int(row.indices[i])], float(row.data[i])) for i in order]


def dense_query(query: sp.csr_matrix) -> np.ndarray:
    q = np.zeros(query.shape[1], dtype=np.float64)
    q[query.indices] = query.data
    return q


def scored_hits(
    ids: list[str],
    q: np.ndarray,
    rows: sp.csr_matrix,
    vocabulary: Vocabulary,
    limit: int | None = None,
) -> list[ScoredHit]:
    """The exact score of each row of ``rows`` (image ``ids[i]``) against the dense float64
    query ``q``, and its matched words, largest contribution first (ties by word index); only
    the first ``limit`` are listed, the rest counted and summed.

    One compiled call for the whole page (:func:`indexer.scoring_kernels.page_contributions`,
    GIL released), so that only the listed words become Python objects: a LexVLA image matches
    hundreds of a model query's words, and building an object for each one was most of what
    the search threads did while holding the GIL (py-spy under overload at 1M images), which
    delayed the event loop's 429s. Sums run smallest first and sequentially, so the score does
    not depend on where the list is cut.
    """
    if rows.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for {rows.shape[0]} rows")
    if rows.shape[1] > len(q):  # the kernel reads q[word] unchecked
        raise ValueError(f"rows of {rows.shape[1]} words for a query of {len(q)}")
    scores, rest_n, rest_sum, ptr, idx, qv, dv, values = kernels.page_contributions(
        rows.indptr, rows.indices, rows.data, q, -1 if limit is None else limit
    )
    words = vocabulary.words
    listed = [
        Contribution(i, words[i], a, b, c)
        for i, a, b, c in zip(idx.tolist(), qv.tolist(), dv.tolist(), values.tolist(), strict=True)
    ]
    bounds, counts, sums = ptr.tolist(), rest_n.tolist(), rest_sum.tolist()
    return [
        ScoredHit(image_id, score, listed[bounds[n] : bounds[n + 1]], counts[n], sums[n])
        for n, (image_id, score) in enumerate(zip(ids, scores.tolist(), strict=True))
    ]


def scored_hit(
    image_id: str,
    q: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    vocabulary: Vocabulary,
    limit: int | None = None,
) -> ScoredHit:
    """:func:`scored_hits` of one image row given as its ``indices`` and ``data``."""
    row = sp.csr_matrix((data, indices, np.array([0, len(indices)])), shape=(1, len(q)), copy=False)
    return scored_hits([image_id], q, row, vocabulary, limit)[0]


def explain_row(
    query: sp.csr_matrix, row: sp.csr_matrix, vocabulary: Vocabulary, limit: int | None = None
) -> ScoredHit:
    """Score and contributions of one image row (the ``id`` is filled in by the caller)."""
    return scored_hit("", dense_query(query), row.indices, row.data, vocabulary, limit)


def row_vectors(index: SearchIndex, store: CorpusStore | None, ids: list[str]) -> sp.csr_matrix:
    """Float rows of ``ids``: the engine's when they are exact, else the corpus store's."""
    if not index.exact_rows and store is not None:
        try:
            return store.vectors_of(ids)
        except KeyError:
            pass  # the index knows images the store does not (yet)
    return index.vectors_of(ids)


def within_reach(
    index: SearchIndex, query: sp.csr_matrix, found: list[tuple[str, float]], need: int
) -> list[tuple[str, float]]:
    """The candidates (best first) that exact re-scoring could still bring into the first
    ``need``: with an engine whose scores are within ``index.error_bound(query)`` of the exact
    ones (the compact engine), a candidate more than twice the bound below the ``need``-th is
    beaten by ``need`` others whatever their exact scores, so its row is not fetched."""
    bound = getattr(index, "error_bound", None)
    if bound is None or len(found) <= need:
        return found
    floor = found[need - 1][1] - 2 * bound(query)
    return [hit for hit in found if hit[1] >= floor]


def search(
    index: SearchIndex,
    store: CorpusStore | None,
    vocabulary: Vocabulary,
    query: sp.csr_matrix,
    *,
    exact: bool,
    top_k: int,
    offset: int = 0,
    min_score: float = 0.0,
    matched_limit: int | None = None,
    rescore_factor: int = 4,
    filters: WordFilter | None = None,
) -> SearchOutcome:
    """Top ``top_k`` hits after ``offset`` with exact scores >= ``min_score``.

    ``exact`` says whether the engine's own top-k can be trusted (:func:`is_exact`); otherwise
    ``rescore_factor`` times the page is fetched and re-scored exactly.
    """
    if query.nnz == 0:
        note = "the query has no active vocabulary words, so nothing can match"
        return SearchOutcome([], 0.0, 0.0, 0, [note])
    start = time.perf_counter()
    if not exact and (store is None or index.exact_rows) and index.ranks_by_rows:
        exact = True  # the engine's order is final for the rows that explain the hits
    if exact:
        found = index.search(query, top_k, offset, filters)
    else:
        want = min(MAX_CANDIDATES, (offset + top_k) * rescore_factor)
        found = index.search(query, want, 0, filters)
    searched = time.perf_counter()
    ids = [i for i, _ in (found if exact else within_reach(index, query, found, offset + top_k))]
    hits: list[ScoredHit] = []
    if ids:
        rows = row_vectors(index, store, ids)
        q = dense_query(query)
        if not exact:  # exact re-scoring of every candidate, then the page
            scores = np.asarray(rows.astype(np.float64) @ q).ravel()
            order = np.lexsort((np.arange(len(ids)), -scores))[offset : offset + top_k]
            rows, ids = rows[order], [ids[i] for i in order]
        hits = scored_hits(ids, q, rows, vocabulary, matched_limit)
        hits.sort(key=lambda h: -h.score)  # stable: engine order breaks float-level ties
        hits = [h for h in hits if h.score >= min_score]
    done = time.perf_counter()
    return SearchOutcome(hits, (searched - start) * 1e3, (done - searched) * 1e3, len(found))
