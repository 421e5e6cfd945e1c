"""The compiled loop behind :func:`indexer.scoring.scored_hits`: every hit of a page scored and
its matched words ordered in one call that releases the GIL.

Why by hand: the same arithmetic in numpy took ~10 array calls per hit, each a few
microseconds with the GIL held, and the service's search threads then held the GIL ~0.2 ms per
request for them alone (py-spy at 1M images, words mode), time the event loop waited for.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(nogil=True, cache=True)
def page_contributions(indptr, indices, data, query, limit):  # pragma: no cover - compiled
    """Rows ``indptr``/``indices``/``data`` (CSR) against the dense float64 ``query``.

    For each row: the contributions ``query[j] * data`` of its matched words (query weight > 0)
    in float64, ordered largest first with ties by word index; the first ``limit`` of them
    listed (``limit`` < 0: all), the rest counted and summed. Every sum runs smallest first, one
    addition at a time, so a score does not depend on where the list is cut.

    Returns (scores, rest_counts, rest_sums, head_ptr, head_words, head_query, head_image,
    head_values): row ``i``'s listed words are ``head_*[head_ptr[i]:head_ptr[i + 1]]``.
    """
    n = len(indptr) - 1
    scores = np.zeros(n, np.float64)
    rest_counts = np.zeros(n, np.int64)
    rest_sums = np.zeros(n, np.float64)
    head_ptr = np.zeros(n + 1, np.int64)
    matched = np.zeros(n, np.int64)  # per row: its words the query has
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if query[indices[p]] > 0:
                matched[i] += 1
    total_matched = matched.sum()
    head_words = np.empty(total_matched, np.int64)
    head_query = np.empty(total_matched, np.float64)
    head_image = np.empty(total_matched, np.float64)
    head_values = np.empty(total_matched, np.float64)
    out = 0
    for i in range(n):
        m = matched[i]
        words = np.empty(m, np.int64)
        qv = np.empty(m, np.float64)
        dv = np.empty(m, np.float64)
        k = 0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if query[j] > 0:
                words[k] = j
                qv[k] = query[j]
                dv[k] = np.float64(data[p])
                k += 1
        order = np.argsort(words, kind="mergesort")  # word order first: the ties' order
        values = qv[order] * dv[order]
        by_value = np.argsort(-values, kind="mergesort")  # stable: largest first
        order, values = order[by_value], values[by_value]
        listed = m if limit < 0 else min(limit, m)
        total = 0.0
        for k in range(m - 1, -1, -1):  # smallest first
            total += values[k]
            if k == listed:
                rest_counts[i] = m - listed
                rest_sums[i] = total
        scores[i] = total
        for k in range(listed):
            o = order[k]
            head_words[out] = words[o]
            head_query[out] = qv[o]
            head_image[out] = dv[o]
            head_values[out] = values[k]
            out += 1
        head_ptr[i + 1] = out
    return (
        scores,
        rest_counts,
        rest_sums,
        head_ptr,
        head_words[:out],
        head_query[:out],
        head_image[:out],
        head_values[:out],
    )


@nb.njit(nogil=True, cache=True)
def row_scores(indptr, indices, data, query):  # pragma: no cover - compiled
    """The float64 dot product of each CSR row (``indptr``/``indices``/``data``) with the dense
    float64 ``query``: the exact scores that choose the page among re-scored candidates (one
    call, the GIL released, no float64 copy of the rows)."""
    n = len(indptr) - 1
    scores = np.zeros(n, np.float64)
    for i in range(n):
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            total += query[indices[p]] * np.float64(data[p])
        scores[i] = total
    return scores
