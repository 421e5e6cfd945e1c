"""Compiled kernels that build and read the compact index's blocks (the layout of
:mod:`indexer.engines.compact.block`): inverted segments, their byte-gap packing, forward rows,
quantisation, and the per-segment counts the planner sums. The search kernels are in
:mod:`indexer.engines.compact.impact_kernels`; why these are written by hand with numba is said
there.
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
def build_small_block(indptr, words, codes, vocabulary_size):  # pragma: no cover - compiled
    """:func:`build_block` by a stable sort of the postings' (word, code descending) keys:
    O(postings log postings + V) instead of O(V * 256), for blocks of a few rows."""
    n = len(indptr) - 1
    first, last = indptr[0], indptr[n]
    keys = np.empty(last - first, np.int64)
    docs = np.empty(last - first, np.uint16)
    for d in range(n):
        for i in range(indptr[d], indptr[d + 1]):
            keys[i - first] = words[i] * CODES + (CODES - 1 - codes[i])
            docs[i - first] = d
    order = np.argsort(keys, kind="mergesort")  # stable: ids increase within a segment
    post = docs[order]
    n_seg = 0
    for j in range(len(order)):
        if j == 0 or keys[order[j]] != keys[order[j - 1]]:
            n_seg += 1
    seg_code = np.empty(n_seg, np.uint8)
    seg_end = np.empty(n_seg, np.uint32)
    word_seg = np.zeros(vocabulary_size + 1, np.uint32)
    s = -1
    for j in range(len(order)):
        key = keys[order[j]]
        if j == 0 or key != keys[order[j - 1]]:
            s += 1
            seg_code[s] = CODES - 1 - key % CODES
            word_seg[key // CODES + 1] += 1  # segments per word, summed below
        seg_end[s] = j + 1
    for w in range(vocabulary_size):
        word_seg[w + 1] += word_seg[w]
    return post, seg_code, seg_end, word_seg


@_jit
def pack_segments(post, seg_end):  # pragma: no cover - compiled
    """Segments of 16-bit ids (``post``, ends ``seg_end`` in postings) -> the stored bytes.

    A segment whose ids are close together (the long, low-impact segments of common words) is
    stored as byte gaps, 1-255 from the previous id (the first from -1), a larger gap as 0 then
    the id in two little-endian bytes; the others as 16-bit little-endian ids at an even offset.
    A segment takes byte gaps when that is smaller and at most 1 in ``ESCAPE_RARITY`` of its
    gaps escapes: each escape is a branch the scorer mispredicts, so the smallest form (up to
    half of the gaps escaping) makes exact search slower than it saves (docs/lab-notes.md).
    Returns (bytes, padded to an even length; end offset of each segment in bytes, with
    ``DELTA`` set for byte gaps and ``CLEAN`` too when none escapes; postings of each segment -
    1).
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
        _row_words(gap_ptr, gaps, code_ptr, d, words, o)
        for j in range(code_ptr[d], code_ptr[d + 1]):
            out_codes[o] = codes[j]
            o += 1
        indptr[r + 1] = o
    return indptr, words, out_codes


@_jit
def _row_words(gap_ptr, gaps, code_ptr, row, words, at):  # pragma: no cover - compiled
    """Write forward row ``row``'s word ids (decoded from its gaps) to ``words[at:]``."""
    p = gap_ptr[row]
    w = np.int64(-1)
    for o in range(at, at + code_ptr[row + 1] - code_ptr[row]):
        g = np.int64(gaps[p])
        p += 1
        if g == 255:
            g = np.int64(gaps[p]) | (np.int64(gaps[p + 1]) << 8)
            p += 2
        w += g + 1
        words[o] = w


@_jit
def fill_row_lengths(docs, block, code_ptr, lengths):  # pragma: no cover - compiled
    """``lengths[i]`` = the forward row length of ``docs[i]`` (block number << 16 | row) for
    the docs of block ``block``; the others are left as they are."""
    for i in range(len(docs)):
        if docs[i] >> 16 == block:
            r = docs[i] & 0xFFFF
            lengths[i] = code_ptr[r + 1] - code_ptr[r]


@_jit
def decode_block_rows(
    docs, block, gap_ptr, gaps, code_ptr, codes, values, indptr, words, weights
):  # pragma: no cover - compiled
    """Write the forward rows of the docs of block ``block`` (of ``docs``: block number << 16 |
    row) at ``indptr[i]`` of ``words`` and ``weights`` (``values[code]``: dequantised).

    A page's hits lie in a few blocks each: one call per block scans the page instead of numpy
    code grouping the docs by block, which held the GIL (:meth:`CompactIndex.vectors_of`)."""
    for i in range(len(docs)):
        if docs[i] >> 16 != block:
            continue
        r = docs[i] & 0xFFFF
        o = indptr[i]
        _row_words(gap_ptr, gaps, code_ptr, r, words, o)
        for j in range(code_ptr[r], code_ptr[r + 1]):
            weights[o] = values[codes[j]]
            o += 1


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
