"""indexer.engines.compact.block / block_kernels: the block layout on small hand-made rows."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from indexer.engines.compact import block_kernels
from indexer.engines.compact.block import Block, encode_ids
from indexer.engines.compact.index import CompactIndex
from indexer.filters import has_matrix

V = 2000


def test_block_layout_matches_its_rows():
    rng = np.random.default_rng(3)
    rows = sp.random(300, V, density=0.05, random_state=4, format="csr", dtype=np.float32)
    rows.data = rng.integers(1, 256, rows.nnz).astype(np.float32)
    rows.sort_indices()
    codes = rows.data.astype(np.uint8)
    ids = encode_ids([str(i) for i in range(300)])
    block = Block.build(ids, rows.indptr, rows.indices, codes, V, has_matrix(rows))
    dense = rows.toarray()
    for w in range(V):
        last_code, ids_of_word = 256, []
        for s in range(block.word_seg[w], block.word_seg[w + 1]):
            docs, code = block.segment(s), int(block.seg_code[s])
            assert code < last_code and np.all(np.diff(docs) > 0)
            assert np.all(dense[docs, w] == code) and len(docs) == block.seg_count[s] + 1
            last_code = code
            ids_of_word += docs.tolist()
        assert sorted(np.flatnonzero(dense[:, w])) == sorted(ids_of_word)
    assert block.postings == rows.nnz
    indptr, words, back = block.decode(np.array([5, 0, 299]))
    for n, r in enumerate([5, 0, 299]):
        a, b = indptr[n], indptr[n + 1]
        np.testing.assert_array_equal(words[a:b], rows[r].indices)
        np.testing.assert_array_equal(back[a:b], codes[rows.indptr[r] : rows.indptr[r + 1]])


def test_segments_take_the_smaller_encoding_and_gaps_escape():
    """Dense segments are byte gaps (with the 0 escape for a gap over 255), sparse ones 16-bit
    ids at an even offset; both decode to their ids and the scorer reads both alike."""
    n = 4000
    dense = np.zeros((n, 3), dtype=np.float32)
    dense[:, 0] = 9  # every row: gaps of 1
    dense[np.r_[0:1000, 1599:4000], 1] = 5  # gaps of 1, one jump of 600 (an escape)
    dense[::400, 2] = 3  # gaps of 400: 16-bit ids
    rows = sp.csr_matrix(dense)
    block = Block.build(
        encode_ids([str(i) for i in range(n)]), rows.indptr, rows.indices,
        rows.data.astype(np.uint8), 3, has_matrix(rows),
    )  # fmt: skip
    kinds = (block.seg_end & block_kernels.DELTA) != 0
    np.testing.assert_array_equal(kinds, [True, True, False])
    clean = (block.seg_end & block_kernels.CLEAN) != 0
    np.testing.assert_array_equal(clean, [True, False, False])  # word 1's gaps have an escape
    assert block.post.nbytes < 2 * block.postings * 0.6  # vs 2 bytes per 16-bit id
    ends = (block.seg_end & block_kernels.END_MASK).astype(np.int64)
    escape = block.post[ends[0] : ends[1]]
    assert (escape == 0).sum() == 1  # the jump from row 999 to 1599
    assert ends[1] % 2 == 1 and ends[2] % 2 == 0  # the 16-bit segment was padded to even
    for w in range(3):
        np.testing.assert_array_equal(block.segment(w), np.flatnonzero(dense[:, w]))
    index = CompactIndex.create(3, pruning=None)
    index.add([f"r{i}" for i in range(n)], rows)
    weights = np.array([[0.5, 0.25, 1.0]], dtype=np.float32)
    hits = index.search(sp.csr_matrix(weights), 5)
    truth = (dense @ weights.T).ravel()
    assert [h[0] for h in hits] == [f"r{i}" for i in (0, 400, 800, 1600, 2000)]
    bound = index.error_bound(sp.csr_matrix(weights))
    assert all(abs(score - truth[0]) <= bound for _, score in hits)
    second = index.search(sp.csr_matrix(np.array([[0.0, 1.0, 0.0]], dtype=np.float32)), 4000)
    assert sorted(int(h[0][1:]) for h in second) == np.flatnonzero(dense[:, 1]).tolist()


def test_forward_gaps_escape_large_jumps():
    indptr = np.array([0, 4, 5], dtype=np.int64)
    words = np.array([0, 254, 255, 1999, 700], dtype=np.int32)  # gaps 0, 253, 0, 1743 | 700
    gaps, ptr = block_kernels.encode_gaps(indptr, words)
    assert len(gaps) == 1 + 1 + 1 + 3 + 3
    _out_ptr, out_words, _ = block_kernels.decode_rows(
        np.array([1, 0]), ptr, gaps, indptr, np.arange(5, dtype=np.uint8)
    )
    np.testing.assert_array_equal(out_words, [700, 0, 254, 255, 1999])
