"""Scoring in the memory engine (:mod:`indexer.engines.memory.index`), over its scipy CSR arrays.

:func:`exact_scores` is one sparse product with the inverted index; :func:`pruned_scores` reads
the heads of the impact-sorted posting lists (down to one contribution threshold when
:class:`Pruning` sets a ``posting_budget``) and re-scores the candidates exactly on the forward
rows; :func:`brute_force_scores` scores the delta rows not inverted yet. The engine's docstring
has the cost model. :func:`impact_sorted_inverted` builds the inverted index the first two read.
The scoring functions only read their arguments, so searches score a snapshot without the
engine's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Pruning:
    """Approximate search settings; scores of the returned hits are still exact."""

    # Defaults from bench/index_search.py at 1M synthetic images (2 cores): p50 13-23 ms,
    # recall@10 1.0 on topical queries; 0.92-1.0 on structureless random ones (the worst case).
    # A corpus whose query lists hold fewer than ``posting_budget`` entries is searched exactly.
    query_words: int | None = None  # keep the query's heaviest words (None: all)
    posting_depth: int | None = None  # entries read per impact-sorted list (None: all)
    candidates: int = 2000  # best partial scores re-scored exactly
    # total entries read over all lists, spent where query weight x impact is highest (None: off)
    posting_budget: int | None = 1_000_000


def exact_scores(q: sp.csr_matrix, inverted: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """All rows sharing a word with the query, and their exact scores."""
    scores = sp.csr_matrix(q @ inverted)
    return scores.indices.astype(np.int64), scores.data


def pruned_scores(
    q: sp.csr_matrix,
    p: Pruning,
    forward: sp.csr_matrix,
    inverted: sp.csr_matrix,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the heads of the heaviest query words' lists, re-scored exactly."""
    n_base = forward.shape[0]
    if n_base == 0 or q.nnz == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.argsort(-q.data, kind="stable")[: p.query_words]
    starts = inverted.indptr[q.indices[order]]
    ends = inverted.indptr[q.indices[order] + 1]
    if p.posting_depth is not None:
        ends = np.minimum(ends, starts + p.posting_depth)
    if p.posting_budget is not None:
        ends = _budget_ends(inverted.data, starts, ends, q.data[order], p.posting_budget)
    spans = list(zip(starts, ends, q.data[order], strict=True))
    postings = np.concatenate([inverted.indices[a:b] for a, b, _ in spans])
    weights = np.concatenate([inverted.data[a:b] * w for a, b, w in spans])
    partial = np.bincount(postings, weights, minlength=n_base)
    if allowed is not None:  # candidates only among the images the filters allow
        partial[~allowed[:n_base]] = 0
    if n_base > p.candidates:
        cand = np.argpartition(partial, n_base - p.candidates)[n_base - p.candidates :]
    else:
        cand = np.arange(n_base)
    cand = np.sort(cand[partial[cand] > 0])
    dense_q = np.zeros(q.shape[1], dtype=np.float32)
    dense_q[q.indices] = q.data
    return cand.astype(np.int64), forward[cand] @ dense_q


def _budget_ends(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, budget: int
) -> np.ndarray:
    """Cut every list where its contribution (query weight x impact) falls below one threshold.

    The threshold is chosen so that about ``budget`` entries are read in all: heavy query words
    read deep, light ones shallow. Depths are found on a grid of quarter-octave steps per list
    (within ~19%), sampled from the impact-sorted lists, so no list is scanned to choose them.
    """
    lengths = ends - starts
    if lengths.sum() <= budget:
        return ends
    top = max(1, int(lengths.max()))
    steps = np.unique(np.round(2.0 ** np.arange(0, np.log2(top) + 0.25, 0.25)).astype(np.int64))
    depth = np.minimum(steps[None, :], lengths[:, None])  # m x steps, entries read
    sampled = data[starts[:, None] + np.maximum(depth - 1, 0)]  # impact at that depth
    contribution = np.where(lengths[:, None] > 0, sampled * weights[:, None], 0.0)
    lo, hi = 0.0, float(contribution.max())
    for _ in range(30):  # bisect the threshold: entries read fall as it rises
        mid = (lo + hi) / 2
        read = np.where(contribution >= mid, depth, 0).max(axis=1).sum()
        lo, hi = (mid, hi) if read > budget else (lo, mid)
    read_per_list = np.where(contribution >= hi, depth, 0).max(axis=1)
    return starts + read_per_list


def brute_force_scores(q: sp.csr_matrix, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the (few) rows not in the inverted index yet: positions and scores > 0."""
    if rows.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = np.asarray((rows @ q.T).todense()).ravel().astype(np.float32)
    hit = np.flatnonzero(scores)
    return hit.astype(np.int64), scores[hit]


def impact_sorted_inverted(forward: sp.csr_matrix) -> sp.csr_matrix:
    """Words x images CSR whose rows (posting lists) are in decreasing weight order."""
    inverted = sp.csr_matrix(forward.T, dtype=np.float32).tocsr()
    indptr, indices, data = inverted.indptr, inverted.indices, inverted.data
    for w in np.flatnonzero(np.diff(indptr) > 1):
        a, b = indptr[w], indptr[w + 1]
        order = np.argsort(-data[a:b], kind="stable")
        indices[a:b] = indices[a:b][order]
        data[a:b] = data[a:b][order]
    inverted.has_sorted_indices = False
    return inverted
