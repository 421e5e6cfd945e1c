"""Compiling the compact engine's kernels ahead of the first search (container images run this
at build time, so that numba's cache holds them)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from indexer import scoring_kernels
from indexer.engines.compact.index import CompactIndex
from indexer.engines.compact.pruning import ImpactPruning


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel, on a tiny index, and the
    contributions of a page of its rows: a first search in a fresh environment would otherwise
    pay a few seconds of compilation (images do this at build time)."""
    rng = np.random.default_rng(0)
    rows = sp.random(64, 50, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    index = CompactIndex.create(50, pruning=ImpactPruning(min_postings=0, candidates=2))
    index.add([str(i) for i in range(64)], rows)
    index.search(rows[0], 3)
    index.search(rows[0], 3, pruning=None)
    found = index.vectors_of(["0", "1"])
    query = rows[0].toarray().ravel().astype(np.float64)
    scoring_kernels.page_contributions(found.indptr, found.indices, found.data, query, 20)
