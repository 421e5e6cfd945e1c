"""Compiled kernels of the compact impact index (:mod:`indexer.engines.compact.index`).

Written by hand with numba because no library does this job: scipy's sparse product holds the GIL
and reads float32 values with 64-bit index arithmetic, and the search libraries on PyPI either
serve another data model (dense ANN) or run as separate servers. Every kernel is compiled with
``nogil=True``, so the service's threads run searches on every core at once, and ``cache=True``, so
the compilation (a few seconds) happens once per machine rather than once per process.

The kernels that build and decode blocks are in :mod:`indexer.engines.compact.block_kernels`; the
layout is documented in :mod:`indexer.engines.compact.block`. In short: a
*block* holds up to 65,536 images with 16-bit local ids; within a block, each word's postings are
split into *segments* of equal impact code (0-255), stored in decreasing code order, the image ids
of a segment in increasing order. A query reads, for each of its words, a prefix of that word's
segments (the ones whose contribution ``query weight x impact`` is at least a threshold), adding
one constant per segment into a float32 accumulator of the block (256 KiB, which stays in L2).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from indexer.engines.compact.block_kernels import CLEAN, CODES, END_MASK
from indexer.engines.compact.prefetch import LINE, prefetch

_jit = nb.njit(nogil=True, cache=True)  # GIL released; compiled once per machine (cached)
RESCORE_AHEAD = 2  # forward rows prefetched ahead of the one re-scored
AHEAD_LINES = 8  # cache lines of a word's next postings prefetched (the hardware streams the rest)


@_jit
def plan_threshold(counts, words, weights, values, share, least, extra):  # pragma: no cover
    """The contribution threshold ``t`` at which about a ``share`` of the query's postings (at
    least ``least``) are read in all; 0 (exact search) when the postings read would be all of
    them, or, with ``extra`` (the cost of re-scoring, in postings) added, at least all of them.

    Word ``words[i]`` (weight ``weights[i]``) reads its postings whose ``weights[i] *
    values[code] >= t``; ``counts[w, c]`` holds how many postings of code ``c`` word ``w`` has
    (read in place, never copied per query). ``t`` is bisected in log space, 24 steps (a
    relative precision of ~1e-6 over the query's range of contributions).
    """
    m = len(words)
    suffix = np.empty((m, CODES + 1), np.int64)  # postings of word i with code >= c
    total = 0
    for i in range(m):
        row = counts[words[i]]
        acc = 0
        suffix[i, CODES] = 0
        for c in range(CODES - 1, -1, -1):
            acc += row[c]
            suffix[i, c] = acc
        total += acc
    budget = max(least, np.int64(share * total))
    if budget + extra >= total:
        return 0.0
    hi = 0.0
    lo = np.inf
    for i in range(m):
        if weights[i] > 0:
            hi = max(hi, weights[i] * values[CODES - 1])
            lo = min(lo, weights[i] * values[1])  # code 0 is never stored
    lo_log, hi_log = np.log(lo), np.log(hi) + 1e-6
    for _ in range(24):
        mid = (lo_log + hi_log) / 2
        if _postings_read(suffix, weights, values, np.exp(mid)) > budget:
            lo_log = mid
        else:
            hi_log = mid
    return np.exp(hi_log)


@_jit
def _postings_read(suffix, weights, values, threshold):  # pragma: no cover - compiled
    read = 0
    for i in range(len(weights)):
        if weights[i] > 0:
            read += suffix[i, np.searchsorted(values, threshold / weights[i])]
    return read


@_jit
def score_block(  # pragma: no cover - compiled
    post8, post16, seg_code, seg_end, word_seg, values, words, weights, min_codes, live, doc_base,
    acc, heap_s, heap_d, size,
):  # fmt: skip
    """Accumulate the query over one block; push its best rows into the running heap.

    Word ``words[i]`` (weight ``weights[i]``) reads its segments of code >= ``min_codes[i]``;
    ``post8`` holds the block's segments (:func:`pack_segments`) and ``post16`` is the same
    bytes read as 16-bit ids. ``acc`` is scratch of at least the block's size. The heap
    (``heap_s``/``heap_d``, ``size`` used) keeps the best ``len(heap_s)`` (score, doc) by partial
    score, docs numbered ``doc_base + row``; ties go to the lower doc, so exact search is
    deterministic. Blocks must be pushed in increasing ``doc_base`` order. Returns the heap's
    new size.
    """
    n = len(live)
    capacity = len(heap_s)
    acc[:n] = 0.0
    one, two, three, eight = np.uintp(1), np.uintp(2), np.uintp(3), np.uintp(8)
    mask = np.uintp(END_MASK)  # unsigned indices: numba adds no negative-index checks
    clean_bit = np.uintp(CLEAN)
    m = len(words)
    # Each word's lists start at an unrelated place in three arrays read one after the other
    # (word_seg -> seg_end/seg_code -> post), mostly from DRAM. So, while word i is scored, the
    # entry of word i + 3 is prefetched, the segment table of word i + 2 and the first postings
    # of word i + 1: 5-7% less time at 300 query words (docs/benchmarks.md).
    for k in range(min(m, 3)):
        prefetch(word_seg, words[k])
    for k in range(min(m, 2)):
        _prefetch_segments(seg_code, seg_end, word_seg, np.uintp(words[k]))
    if m:
        _prefetch_postings(post8, seg_code, seg_end, word_seg, np.uintp(words[0]), min_codes[0])
    for i in range(m):
        if i + 3 < m:
            prefetch(word_seg, words[i + 3])
        if i + 2 < m:
            _prefetch_segments(seg_code, seg_end, word_seg, np.uintp(words[i + 2]))
        if i + 1 < m:
            _prefetch_postings(
                post8, seg_code, seg_end, word_seg, np.uintp(words[i + 1]), min_codes[i + 1]
            )
        w = np.uintp(words[i])
        s0 = np.uintp(word_seg[w])
        s1 = np.uintp(word_seg[w + one])
        start = np.uintp(0) if s0 == 0 else np.uintp(seg_end[s0 - one]) & mask
        qw = weights[i]
        cmin = min_codes[i]
        for s in range(s0, s1):
            c = seg_code[s]
            if c < cmin:
                break
            end = np.uintp(seg_end[s])
            contribution = np.float32(qw * values[c])
            if end > mask:  # byte gaps
                clean = end & clean_bit
                end &= mask
                doc = np.uintp(0) - one  # wraps to the row before 0; the first gap fixes it
                if clean:  # no escape: no branch per posting
                    for byte in range(start, end):
                        doc += np.uintp(post8[byte])
                        acc[doc] += contribution
                    start = end
                    continue
                p = start
                while p < end:
                    gap = np.uintp(post8[p])
                    if gap == 0:  # escape: the id itself follows
                        doc = np.uintp(post8[p + one]) | (np.uintp(post8[p + two]) << eight)
                        p += three
                    else:
                        doc += gap
                        p += one
                    acc[doc] += contribution
            else:
                for q in range((start + one) >> one, end >> one):
                    acc[post16[q]] += contribution
            start = end
    # One well-predicted branch per image: above the heap's worst once it is full (an equal
    # score loses to the kept, lower doc), above 0 before. Branching on "score > 0" first
    # costs a misprediction for every other image (~6 ns each); so would branching on
    # ``live`` when a filter leaves a scattered part of the rows, so a row that is not live
    # scores 0 here (a multiplication, no branch).
    bar = heap_s[0] if size == capacity else np.float32(0.0)
    alive = live.view(np.uint8)  # as bytes: converted to a float without a branch
    for d in range(n):
        score = acc[d] * np.float32(alive[d])
        if score > bar:
            size = _heap_push(heap_s, heap_d, size, capacity, score, doc_base + d)
            if size == capacity:
                bar = heap_s[0]
    return size


@_jit
def _prefetch_segments(seg_code, seg_end, word_seg, w):  # pragma: no cover - compiled
    """Start loading word ``w``'s segment table (its entry in ``word_seg`` must be cached)."""
    s0 = np.uintp(word_seg[w])
    prefetch(seg_code, s0)
    prefetch(seg_end, s0 - np.uintp(1) if s0 > 0 else s0)  # the previous end is where w starts
    prefetch(seg_end, s0 + np.uintp(LINE // 4 - 1))


@_jit
def _prefetch_postings(post8, seg_code, seg_end, word_seg, w, cmin):  # pragma: no cover
    """Start loading the first :data:`AHEAD_LINES` lines of word ``w``'s postings if it reads
    any (its first segment's code is >= ``cmin``; its segment table must be cached). The
    segments it reads are not walked here: the scoring loop does that once."""
    one = np.uintp(1)
    s0 = np.uintp(word_seg[w])
    s1 = np.uintp(word_seg[w + one])
    if s0 == s1 or seg_code[s0] < cmin:
        return
    mask = np.uintp(END_MASK)
    start = np.uintp(0) if s0 == 0 else np.uintp(seg_end[s0 - one]) & mask
    end = min(np.uintp(seg_end[s1 - one]) & mask, start + np.uintp(AHEAD_LINES * LINE))
    for p in range(start, end, LINE):
        prefetch(post8, p)


@_jit
def _worse(s1, d1, s2, d2):  # pragma: no cover - compiled
    return s1 < s2 or (s1 == s2 and d1 > d2)


@_jit
def _heap_push(heap_s, heap_d, size, capacity, score, doc):  # pragma: no cover - compiled
    """Min-heap (worst at the root) of the best ``capacity`` hits; returns the new size."""
    if size < capacity:
        i = size
        size += 1
        heap_s[i] = score
        heap_d[i] = doc
        while i > 0:
            parent = (i - 1) // 2
            if not _worse(heap_s[i], heap_d[i], heap_s[parent], heap_d[parent]):
                break
            heap_s[i], heap_s[parent] = heap_s[parent], heap_s[i]
            heap_d[i], heap_d[parent] = heap_d[parent], heap_d[i]
            i = parent
        return size
    if not _worse(heap_s[0], heap_d[0], score, doc):
        return size
    heap_s[0] = score
    heap_d[0] = doc
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        right = left + 1
        if right < size and _worse(heap_s[right], heap_d[right], heap_s[left], heap_d[left]):
            child = right
        if not _worse(heap_s[child], heap_d[child], heap_s[i], heap_d[i]):
            break
        heap_s[i], heap_s[child] = heap_s[child], heap_s[i]
        heap_d[i], heap_d[child] = heap_d[child], heap_d[i]
        i = child
    return size


@_jit
def rescore(rows, gap_ptr, gaps, code_ptr, codes, values, dense_query):  # pragma: no cover
    """Full (quantised) scores of forward ``rows`` of one block against a dense query vector.

    Candidate rows are scattered over the block, so each row's bytes come from DRAM: every cache
    line of the row :data:`RESCORE_AHEAD` places on is prefetched while this one is decoded, so
    that its misses overlap this row's work.
    """
    n = len(rows)
    out = np.empty(n, np.float32)
    one = np.uintp(1)
    for r in range(min(RESCORE_AHEAD, n)):
        _prefetch_row(gap_ptr, gaps, code_ptr, codes, np.uintp(rows[r]))
    for r in range(n):
        if r + RESCORE_AHEAD < n:
            _prefetch_row(gap_ptr, gaps, code_ptr, codes, np.uintp(rows[r + RESCORE_AHEAD]))
        d = np.uintp(rows[r])
        p = np.uintp(gap_ptr[d])
        w = np.uintp(0) - one  # wraps to the word before 0; the first gap brings it to the id
        score = np.float32(0.0)
        for j in range(np.uintp(code_ptr[d]), np.uintp(code_ptr[d + one])):
            g = np.uintp(gaps[p])
            p += one
            if g == 255:
                g = np.uintp(gaps[p]) | (np.uintp(gaps[p + one]) << np.uintp(8))
                p += np.uintp(2)
            w += g + one
            score += dense_query[w] * values[codes[j]]  # no branch: most words are not queried
        out[r] = score
    return out


@_jit
def _prefetch_row(gap_ptr, gaps, code_ptr, codes, d):  # pragma: no cover - compiled
    for q in range(np.uintp(gap_ptr[d]), np.uintp(gap_ptr[d + np.uintp(1)]), LINE):
        prefetch(gaps, q)
    for q in range(np.uintp(code_ptr[d]), np.uintp(code_ptr[d + np.uintp(1)]), LINE):
        prefetch(codes, q)
