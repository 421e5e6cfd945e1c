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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from indexer import scoring_kernels as kernels
from indexer.engines.base import SearchIndex
from indexer.fields import FieldColumns, Where, WhereError, parse_where
from indexer.fields.where import check_facets, check_sort, collection_condition
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
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    matches: int | None = None  # every matching image, counted when sorting or faceting


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


@dataclass(frozen=True)
class Arrangement:
    """What a search returns besides relevance: metadata conditions, an order and facets.

    ``sort``: None (relevance) or (field, descending); ``facets``: (name, field, part) as
    :func:`indexer.fields.where.check_facets` gives them.
    """

    where: Where | None = None
    sort: tuple[str, bool] | None = None
    facets: tuple[tuple[str, str, str], ...] = ()

    @property
    def needs_all(self) -> bool:
        """True when every matching image must be found, not only the page."""
        return self.sort is not None or bool(self.facets)


RELEVANCE = Arrangement()  # no conditions, relevance order, no facets


def arrangement(
    fields: FieldColumns | None,
    where: Mapping[str, Any] | None = None,
    sort: str = "relevance",
    facets: Sequence[str] = (),
    collections: Iterable[str] | None = None,
) -> Arrangement:
    """A search's conditions, order and facets checked against an index version's fields
    (:class:`~indexer.fields.WhereError` names what is wrong); ``collections``: only their
    images (a collection-scoped key), whatever ``where`` says."""
    if fields is None:
        if where or sort != "relevance" or facets or collections is not None:
            raise WhereError(
                "where",
                "this index version has no metadata columns, so it cannot filter, sort or count "
                "by metadata (nor serve a key limited to collections); rebuild it from the store "
                "(`lexvla index reindex`)",
            )
        return RELEVANCE
    parsed = parse_where(where, fields.registry)
    order = check_sort(sort, fields.registry)
    counted = tuple(check_facets(list(facets), fields.registry))
    if collections is not None:
        parsed = parsed.also(collection_condition(sorted(collections)))
    return Arrangement(None if parsed.empty else parsed, order, counted)


def within_reach(
    index: SearchIndex, query: sp.csr_matrix, found: list[tuple[str, float]], need: int
) -> list[tuple[str, float]]:
    """The candidates (best first) that exact re-scoring could still bring into the first
    ``need``: with an engine whose scores are within ``index.score_error(query)`` of the exact
    ones (the compact engine), a candidate more than twice the bound below the ``need``-th is
    beaten by ``need`` others whatever their exact scores, so its row is not fetched."""
    if len(found) <= need:
        return found
    bound = index.score_error(query)
    if bound is None:
        return found
    floor = found[need - 1][1] - 2 * bound
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
    arrange: Arrangement = RELEVANCE,
) -> SearchOutcome:
    """Top ``top_k`` hits after ``offset`` with exact scores >= ``min_score``.

    ``exact`` says whether the engine's own top-k can be trusted (:func:`is_exact`); otherwise
    ``rescore_factor`` times the page is fetched and re-scored exactly. ``arrange`` adds
    metadata conditions (applied by the engine), a field order and facet counts
    (:func:`arranged`).
    """
    if query.nnz == 0:
        note = "the query has no active vocabulary words, so nothing can match"
        return SearchOutcome([], 0.0, 0.0, 0, [note], {}, 0 if arrange.needs_all else None)
    if arrange.needs_all:
        options = {
            "exact": exact, "top_k": top_k, "offset": offset, "min_score": min_score,
            "matched_limit": matched_limit, "rescore_factor": rescore_factor, "filters": filters,
        }  # fmt: skip
        return arranged(index, store, vocabulary, query, arrange, options)
    start = time.perf_counter()
    if not exact and (store is None or index.exact_rows) and index.ranks_by_rows:
        exact = True  # the engine's order is final for the rows that explain the hits
    where = arrange.where
    if exact:
        found = index.search(query, top_k, offset, filters, where=where)
    else:
        want = min(MAX_CANDIDATES, (offset + top_k) * rescore_factor)
        found = index.search(query, want, 0, filters, where=where)
    searched = time.perf_counter()
    ids = [i for i, _ in (found if exact else within_reach(index, query, found, offset + top_k))]
    hits: list[ScoredHit] = []
    if ids:
        rows = row_vectors(index, store, ids)
        q = dense_query(query)
        if not exact:  # exact re-scoring of every candidate, then the page
            scores = kernels.row_scores(rows.indptr, rows.indices, rows.data, q)
            order = np.lexsort((np.arange(len(ids)), -scores))[offset : offset + top_k]
            rows, ids = rows[order], [ids[i] for i in order]
        hits = scored_hits(ids, q, rows, vocabulary, matched_limit)
        hits.sort(key=lambda h: -h.score)  # stable: engine order breaks float-level ties
        hits = [h for h in hits if h.score >= min_score]
    done = time.perf_counter()
    return SearchOutcome(hits, (searched - start) * 1e3, (done - searched) * 1e3, len(found))


def arranged(
    index: SearchIndex,
    store: CorpusStore | None,
    vocabulary: Vocabulary,
    query: sp.csr_matrix,
    arrange: Arrangement,
    options: dict[str, Any],
) -> SearchOutcome:
    """A search that needs every matching image: ordered by a field, or with facet counts;
    ``options`` are :func:`search`'s own keyword arguments but ``arrange``.

    The images that *match* share a word with the query (the engine returns them all), pass
    the word filters and ``where``, and score at least ``min_score``. With ``min_score`` above
    0 and an engine whose scores are not exact, every match is re-scored exactly first, so the
    floor is the one the hits show. Facets count all matches. The page is the relevance page
    (:func:`search`), or the matches ordered by the field (images without it last; ties by
    score, then id, so that pages are stable).
    """
    start = time.perf_counter()
    fields = index.fields
    if fields is None:
        raise WhereError(
            "sort" if arrange.sort else "facets",
            "this index version has no metadata columns to sort or count by; rebuild it from "
            "the store (`lexvla index reindex`)",
        )
    filters, min_score = options["filters"], options["min_score"]
    offset, top_k = options["offset"], options["top_k"]
    rows, scores = index.matching(query, filters, arrange.where)
    found = len(rows)
    if min_score > 0:
        rows, scores = _floor(index, store, query, fields, rows, scores, min_score)
    facets = {name: fields.facet_counts(field, part, rows) for name, field, part in arrange.facets}
    searched = time.perf_counter()
    if arrange.sort is None:
        where_only = Arrangement(arrange.where)
        hits = search(index, store, vocabulary, query, arrange=where_only, **options).hits
    else:
        order = _order(rows, scores, fields, arrange.sort)[offset : offset + top_k]
        page = fields.id_texts(rows[order])
        q = dense_query(query)
        rows_of_page = row_vectors(index, store, page)
        hits = scored_hits(page, q, rows_of_page, vocabulary, options["matched_limit"])
    done = time.perf_counter()
    return SearchOutcome(
        hits, (searched - start) * 1e3, (done - searched) * 1e3, found, [], facets, len(rows)
    )


def _floor(
    index: SearchIndex,
    store: CorpusStore | None,
    query: sp.csr_matrix,
    fields: FieldColumns,
    rows: np.ndarray,
    scores: np.ndarray,
    min_score: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The matches whose exact score is at least ``min_score``: the engine's scores decide
    beyond its error bound, the images within it (all of them when the bound is unknown) are
    re-scored exactly."""
    error = index.score_error(query)
    if error is None:
        unsure = np.ones(len(rows), dtype=bool)
    else:
        unsure = np.abs(scores - min_score) <= error
    if unsure.any():
        ids = fields.id_texts(rows[unsure])
        exact = np.asarray(row_vectors(index, store, ids).astype(np.float64) @ dense_query(query))
        scores = scores.copy()
        scores[unsure] = exact.ravel()
    keep = scores >= min_score
    return rows[keep], scores[keep]


def _order(
    rows: np.ndarray, scores: np.ndarray, fields: FieldColumns, sort: tuple[str, bool]
) -> np.ndarray:
    """Indices of the matches in page order: by the sort field (images without it last), then
    score descending, then id (``rows`` are in id order)."""
    field, descending = sort
    key, missing = fields.sort_keys(field, rows)
    return np.lexsort((rows, -scores, -key if descending else key, missing))
