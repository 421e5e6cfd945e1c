import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.sparsify import active_counts, default_threshold, sparsify, sparsify_on_device


def test_threshold_keeps_exactly_entries_above_one_over_sqrt_v():
    rng = np.random.default_rng(0)
    dense = rng.random((5, 400)).astype(np.float32) * 0.1
    t = default_threshold(400)
    assert t == pytest.approx(1 / math.sqrt(400))
    rows = sparsify(torch.from_numpy(dense))
    assert rows.dtype == np.float32 and rows.shape == (5, 400)
    expected = dense > t
    got = rows.toarray() != 0
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(rows.toarray()[expected], dense[expected])  # weights untouched
    np.testing.assert_array_equal(active_counts(rows), expected.sum(1))


def test_top_k_keeps_the_k_largest_kept_entries():
    rng = np.random.default_rng(1)
    dense = rng.random((4, 300)).astype(np.float32)
    rows = sparsify(dense, threshold=0.0, top_k=17)
    assert (active_counts(rows) == 17).all()
    for r in range(4):
        kth = np.sort(dense[r])[-17]
        assert set(rows[r].indices) == set(np.flatnonzero(dense[r] >= kth))
    # top-k never brings back entries under the threshold
    few = sparsify(dense * 0.001, top_k=17)
    assert few.nnz == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        sparsify(np.ones((1, 4)), top_k=0)
    with pytest.raises(ValueError, match="shape"):
        sparsify(np.ones((1, 2, 3)))


@pytest.mark.parametrize(("threshold", "top_k"), [(None, None), (0.0, 17), (None, 5), (0.2, 1000)])
def test_the_device_path_gives_the_host_rows(threshold, top_k):
    """GPU vectors are cut on the GPU; on CPU tensors the same code must give the numpy rows."""
    dense = torch.rand(6, 300, generator=torch.Generator().manual_seed(2)) ** 6
    dense[3] = 0.0  # a row with nothing kept
    host = sparsify(dense.numpy(), threshold, top_k)
    device = sparsify_on_device(dense, threshold, top_k)
    assert device.shape == host.shape and device.dtype == np.float32
    assert device.has_sorted_indices and (device != host).nnz == 0
    np.testing.assert_array_equal(device.indptr, host.indptr)
    with pytest.raises(ValueError, match="top_k"):
        sparsify_on_device(dense, top_k=0)


def test_a_word_budget_keeps_the_k_heaviest_ties_by_word_index():
    from model.sparsify import keep_heaviest

    rng = np.random.default_rng(4)
    dense = rng.integers(0, 4, size=(40, 30)).astype(np.float32) / 4  # many ties, some empty
    dense[3] = 0.0
    rows = sp.csr_matrix(dense)
    for k in (1, 4, 30):
        got = keep_heaviest(rows, k)
        for r in range(40):
            nonzero = [(i, float(w)) for i, w in enumerate(dense[r]) if w > 0]
            heaviest = sorted(nonzero, key=lambda e: (-e[1], e[0]))[:k]
            row = got[r]
            assert sorted(zip(row.indices.tolist(), row.data.tolist(), strict=True)) == sorted(
                heaviest
            )
    assert (keep_heaviest(rows, 30) != rows).nnz == 0  # a budget above every row: unchanged
    with pytest.raises(ValueError, match="must be positive"):
        keep_heaviest(rows, 0)
