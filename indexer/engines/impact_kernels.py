"""Compiled kernels of the compact impact index (:mod:`indexer.engines.compact`).

Written by hand with numba because no library does this job: scipy's sparse product holds the GIL
and reads float32 values with 64-bit index arithmetic, and the search libraries on PyPI either
serve another data model (dense ANN) or run as separate servers. Every kernel is compiled with
``nogil=True``, so the service's threads run searches on every core at once, and ``cache=True``, so
the compilation (a few seconds) happens once per machine rather than once per process.

The layout the kernels read is documented in :mod:`indexer.engines.compact_block`. In short: a
*block* holds up to 65,536 images with 16-bit local ids; within a block, each word's postings are
split into *segments* of equal impact code (0-255), stored in decreasing code order, the image ids
of a segment in increasing order. A query reads, for each of its words, a prefix of that word's
segments (the ones whose contribution ``query weight x impact`` is at least a threshold), adding
one constant per segment into a float32 accumulator of the block (256 KiB, which stays in L2).
"""

from __future__ import annotations

import numba as nb
import numpy as np

CODES = 256
DELTA = np.int64(1 << 31)  # seg_end bit: the segment is stored as byte gaps
CLEAN = np.int64(1 << 30)  # seg_end bit: ... and none of them escapes
END_MASK = np.int64((1 << 30) - 1)
ESCAPE_RARITY = 20  # a byte-gap segment has at most 1 escape in this many gaps (pack_segments)
_jit = nb.njit(nogil=True, cache=True)  # GIL released; compiled once per machine (cached)


# --- building ---------------------------------------------------------------------------------
@_jit
def build_block(indptr, words, codes, vocabulary_size):  # pragma: no cover - compiled
    """Inverted block of rows ``indptr`` (local ids 0..n-1) -> (post, seg_code, seg_end, word_seg).

    A counting sort on (word, code descending): one pass to count, one to place, so image ids come
    out increasing within each segment without a comparison sort.
    """
    n = len(indptr) - 1
    first, last = indptr[0], indptr[n]
    keys = vocabulary_size * CODES
    counts = np.zeros(keys, np.int64)
    for i in range(first, last):
        counts[words[i] * CODES + (CODES - 1 - codes[i])] += 1
    n_seg = 0
    for key in range(keys):
        if counts[key] > 0:
            n_seg += 1
    seg_code = np.empty(n_seg, np.uint8)
    seg_end = np.empty(n_seg, np.uint32)
    word_seg = np.empty(vocabulary_size + 1, np.uint32)
    offsets = np.empty(keys, np.int64)
    pos = 0
    s = 0
    for w in range(vocabulary_size):
        word_seg[w] = s
        for c in range(CODES):
            key = w * CODES + c
            offsets[key] = pos
            if counts[key] > 0:
                pos += counts[key]
                seg_code[s] = CODES - 1 - c
                seg_end[s] = pos
                s += 1
    word_seg[vocabulary_size] = s
    post = np.empty(last - first, np.uint16)
    for d in range(n):
        for i in range(indptr[d], indptr[d + 1]):
            key = words[i] * CODES + (CODES - 1 - codes[i])
            post[offsets[key]] = d
            offsets[key] += 1
    return post, seg_code, seg_end, word_seg


@_jit
def pack_segments(post, seg_end):  # pragma: no cover - compiled
    """Segments of 16-bit ids (``post``, ends ``seg_end`` in postings) -> the stored bytes.

    A segment whose ids are close together (the long, low-impact segments of common words) is
    stored as byte gaps, 1-255 from the previous id (the first from -1), a larger gap as 0 then
    the id in two little-endian bytes; the others as 16-bit little-endian ids at an even offset.
    A segment takes byte gaps when that is smaller and at most 1 in ``ESCAPE_RARITY`` of its
    gaps escapes: each escape is a branch the scorer mispredicts, and with up to half of them
    escaping (the smallest form), exact search was 1.7x slower (measured at 1M). Returns (bytes, padded to an even length; end offset
    of each segment in bytes, with ``DELTA`` set for byte gaps and ``CLEAN`` too when none
    escapes; postings of each segment - 1).
    """
    n_seg = len(seg_end)
    out = np.zeros(2 * len(post) + n_seg + 2, np.uint8)
    ends = np.empty(n_seg, np.uint32)
    counts = np.empty(n_seg, np.uint16)
    o = np.int64(0)
    start = np.int64(0)
    for s in range(n_seg):
        end = np.int64(seg_end[s])
        escapes = 0
        prev = np.int64(-1)
        for p in range(start, end):
            doc = np.int64(post[p])
            if doc - prev > 255:
                escapes += 1
            prev = doc
        n = end - start
        if n + 2 * escapes < 2 * n and escapes * ESCAPE_RARITY <= n:
            prev = np.int64(-1)
            for p in range(start, end):
                doc = np.int64(post[p])
                if doc - prev > 255:
                    out[o + 1] = doc & 0xFF
                    out[o + 2] = doc >> 8
                    o += 3  # out[o] stays 0: the escape
                else:
                    out[o] = doc - prev
                    o += 1
                prev = doc
            ends[s] = o | DELTA | (CLEAN if escapes == 0 else 0)
        else:
            o += o & 1  # 16-bit ids start at an even offset (the pad byte stays 0)
            for p in range(start, end):
                doc = np.int64(post[p])
                out[o] = doc & 0xFF
                out[o + 1] = doc >> 8
                o += 2
            ends[s] = o
        counts[s] = n - 1
        start = end
    o += o & 1
    return out[:o].copy(), ends, counts


@_jit
def segment_ids(post8, post16, seg_end, s):  # pragma: no cover - compiled
    """The image ids (local, increasing) of segment ``s`` of a block."""
    start = np.int64(0) if s == 0 else np.int64(seg_end[s - 1]) & END_MASK
    end = np.int64(seg_end[s])
    if end & DELTA:
        end &= END_MASK
        out = np.empty(end - start, np.int64)
        n = 0
        doc = np.int64(-1)
        p = start
        while p < end:
            d = np.int64(post8[p])
            if d == 0:
                doc = np.int64(post8[p + 1]) | (np.int64(post8[p + 2]) << 8)
                p += 3
            else:
                doc += d
                p += 1
            out[n] = doc
            n += 1
        return out[:n].copy()
    return post16[(start + 1) >> 1 : end >> 1].astype(np.int64)


@_jit
def add_segment_counts(seg_code, seg_count, word_seg, counts, sign):  # pragma: no cover
    """``counts[w, code] += sign * postings`` for every segment of a block (the planning stats)."""
    for w in range(len(word_seg) - 1):
        for s in range(word_seg[w], word_seg[w + 1]):
            counts[w, seg_code[s]] += sign * (np.int64(seg_count[s]) + 1)


@_jit
def encode_gaps(indptr, words):  # pragma: no cover - compiled
    """Forward rows' sorted word ids as byte gaps; gaps >= 255 escape to 255 + 2 bytes.

    Returns (bytes, byte offset of each row). LexVLA rows hold ~1,000 of ~17k words, so most
    gaps are below 255 and a word id costs about one byte instead of two.
    """
    n = len(indptr) - 1
    out = np.empty(3 * (indptr[n] - indptr[0]) + 1, np.uint8)
    ptr = np.empty(n + 1, np.int64)
    p = 0
    for d in range(n):
        ptr[d] = p
        prev = -1
        for i in range(indptr[d], indptr[d + 1]):
            gap = words[i] - prev - 1
            prev = words[i]
            if gap < 255:
                out[p] = gap
                p += 1
            else:
                out[p] = 255
                out[p + 1] = gap & 0xFF
                out[p + 2] = gap >> 8
                p += 3
    ptr[n] = p
    return out[:p].copy(), ptr


@_jit
def decode_rows(docs, gap_ptr, gaps, code_ptr, codes):  # pragma: no cover - compiled
    """Word ids and codes of forward rows ``docs`` (CSR parts: indptr, words, codes)."""
    total = 0
    for d in docs:
        total += code_ptr[d + 1] - code_ptr[d]
    indptr = np.zeros(len(docs) + 1, np.int64)
    words = np.empty(total, np.int32)
    out_codes = np.empty(total, np.uint8)
    o = 0
    for r in range(len(docs)):
        d = docs[r]
        p = gap_ptr[d]
        w = np.int64(-1)
        for j in range(code_ptr[d], code_ptr[d + 1]):
            g = np.int64(gaps[p])
            p += 1
            if g == 255:
                g = np.int64(gaps[p]) | (np.int64(gaps[p + 1]) << 8)
                p += 2
            w += g + 1
            words[o] = w
            out_codes[o] = codes[j]
            o += 1
        indptr[r + 1] = o
    return indptr, words, out_codes


# --- searching --------------------------------------------------------------------------------
@_jit
def plan_threshold(counts, words, weights, values, share, least, extra):  # pragma: no cover
    """The contribution threshold ``t`` at which about a ``share`` of the query's postings (at
    least ``least``) are read in all; 0 (exact search) when the postings read would be all of
    them, or, with ``extra`` (the cost of re-scoring, in postings) added, at least all of them.

    Word ``words[i]`` (weight ``weights[i]``) reads its postings whose ``weights[i] *
    values[code] >= t``; ``counts[w, c]`` holds how many postings of code ``c`` word ``w`` has
    (read in place: the planning costs ~0.3 ms at 300 query words). ``t`` is bisected in log
    space, 24 steps (a relative precision of ~1e-6 over the query's range of contributions).
    Returns (t, postings read at t, postings of the query).
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
        return 0.0, total, total
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
    t = np.exp(hi_log)
    return t, _postings_read(suffix, weights, values, t), total


@_jit
def _postings_read(suffix, weights, values, threshold):  # pragma: no cover - compiled
    read = 0
    for i in range(len(weights)):
        if weights[i] > 0:
            read += suffix[i, np.searchsorted(values, threshold / weights[i])]
    return read


@_jit
def quantise_rows(indptr, indices, data, scale):  # pragma: no cover - compiled
    """Float CSR rows -> (indptr, words, codes) with codes round(w / scale) in 1..255 (code 0
    dropped), and the largest |w - code * scale| over every weight, dropped ones included."""
    n = len(indptr) - 1
    out_ptr = np.zeros(n + 1, np.int64)
    words = np.empty(indptr[n] - indptr[0], np.int32)
    codes = np.empty(indptr[n] - indptr[0], np.uint8)
    worst = 0.0
    o = 0
    for r in range(n):
        for i in range(indptr[r], indptr[r + 1]):
            c = min(np.rint(data[i] / scale), CODES - 1)
            worst = max(worst, abs(data[i] - c * scale))
            if c > 0:
                words[o] = indices[i]
                codes[o] = np.uint8(c)
                o += 1
        out_ptr[r + 1] = o
    return out_ptr, words[:o].copy(), codes[:o].copy(), worst


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
    for i in range(len(words)):
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
                if clean:  # no escape: a loop without the branch (~30% faster per posting)
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
    # costs a misprediction for every other image (~6 ns each).
    bar = heap_s[0] if size == capacity else np.float32(0.0)
    for d in range(n):
        score = acc[d]
        if score > bar and live[d]:
            size = _heap_push(heap_s, heap_d, size, capacity, score, doc_base + d)
            if size == capacity:
                bar = heap_s[0]
    return size


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
    """Full (quantised) scores of forward ``rows`` of one block against a dense query vector
    (and a byte to ignore).

    Candidate rows are scattered over the block, so each row's bytes come from DRAM: while one
    row is decoded, one byte of every cache line of the next row is read, so that its misses
    overlap this row's work (measured 2-3x faster on cold rows than decoding one at a time).
    """
    out = np.empty(len(rows), np.float32)
    one = np.uintp(1)
    sink = np.uint8(0)
    for r in range(len(rows)):
        if r + 1 < len(rows):
            nxt = np.uintp(rows[r + 1])
            for q in range(np.uintp(gap_ptr[nxt]), np.uintp(gap_ptr[nxt + one]), 64):
                sink ^= gaps[q]
            for q in range(np.uintp(code_ptr[nxt]), np.uintp(code_ptr[nxt + one]), 64):
                sink ^= codes[q]
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
    return out, sink  # returning what the touching loads read keeps them from being removed
