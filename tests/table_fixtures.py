"""A random query table for a model (the service and model tests' stand-in for a trained one)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from model.query_table import QueryTable


def random_table(model, seed: int = 0, per_token: int = 12) -> QueryTable:
    """Every token row: ``per_token`` random words with random positive weights."""
    rng = np.random.default_rng(seed)
    tokens, words = len(model.tokenizer), len(model.vocabulary)
    cols = np.stack([rng.choice(words, per_token, replace=False) for _ in range(tokens)])
    values = rng.uniform(0.01, 1.0, size=cols.shape).astype(np.float32)
    rows = sp.csr_matrix(
        (values.ravel(), cols.ravel(), np.arange(0, tokens * per_token + 1, per_token)),
        shape=(tokens, words),
    )
    rows.sort_indices()
    return QueryTable.for_model(rows, model, {"teacher": "random"})
