"""Shared data of the compact engine's tests: a topical corpus of 6,000 rows and its queries,
and the same rows in a compact index (several blocks) and in the exact memory engine."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.engines.compact.index import CompactIndex
from indexer.engines.memory.index import MemoryIndex

V = 2000


P = 1.0 / (np.arange(V) + 5.0)
P /= P.sum()  # Zipf word popularity


def topical_rows(n: int, seed: int, active: int = 150) -> tuple[sp.csr_matrix, np.ndarray]:
    """Unit rows: Zipf background words plus a few strong words of one of 50 topics each, so
    that top-10s are decided by real score gaps (as for LexVLA images), not by noise."""
    rng = np.random.default_rng(seed)
    p = P
    topic_words = rng.choice(V, size=(50, 8), replace=False)
    topics = rng.integers(0, 50, size=n)
    dense = np.zeros((n, V), dtype=np.float32)
    for r in range(n):
        words = rng.choice(V, size=active, replace=False, p=p)
        dense[r, words] = rng.lognormal(-3.5, 0.8, size=active)
        strong = topic_words[topics[r]][rng.random(8) < 0.7]
        dense[r, strong] = rng.lognormal(-1.5, 0.4, size=len(strong))
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return sp.csr_matrix(dense), topic_words


@pytest.fixture(scope="module")
def corpus():
    rows, topic_words = topical_rows(6000, seed=0)
    rng = np.random.default_rng(1)
    queries = np.zeros((60, V), dtype=np.float32)
    for i in range(60):
        queries[i, topic_words[i % 50][:5]] = rng.uniform(0.3, 1.0, 5)
        queries[i, rng.choice(V, 40, replace=False, p=P)] += rng.exponential(0.05, 40)
    ids = [f"img-{i:05d}" for i in range(rows.shape[0])]
    return ids, rows, sp.csr_matrix(queries)


@pytest.fixture(scope="module")
def pair(corpus):
    ids, rows, _ = corpus
    compact = CompactIndex.create(V, pruning=None, threads=2)
    compact.block_rows = 2500  # several blocks, one of them partial
    for start in range(0, len(ids), 1000):
        compact.add(ids[start : start + 1000], rows[start : start + 1000])
    memory = MemoryIndex.create(V)
    memory.add(ids, rows)
    return compact, memory


@pytest.fixture
def free_planning(monkeypatch):
    """The planner's own steps cost nothing: a corpus this small is then pruned as planned
    (with their real costs, reading all of its few postings is cheaper, and is chosen)."""
    from indexer.engines.compact import search

    for name in ("PRUNED_COST", "PLAN_COST"):
        monkeypatch.setattr(search, name, 0.0)
    monkeypatch.setattr(search, "RESCORE_COST", 1.0)
