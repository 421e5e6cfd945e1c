import math

import numpy as np
import pytest
import torch

from model.sparsify import active_counts, default_threshold, sparsify


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
