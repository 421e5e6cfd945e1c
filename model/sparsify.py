"""Sparsification: dense lexical vectors -> sparse rows in vocabulary index space.

The paper keeps the entries above ``1/sqrt(V)``, the value every entry of a uniform unit vector
would have; a top-k cut (k=512 in the paper's ablation) can be applied on
top. Weights are kept as they are (not re-normalised), so a sparse dot product is the dense dot
product restricted to the kept words, and every score is a sum of per-word contributions.

Vectors on a GPU are cut there (:func:`sparsify_on_device`): only the ~1,000 kept entries of a
row cross to the host, not its 17k dense floats, and the host waits once, for the result. Rows
that are already sparse (the query table's sums, ``model.query_table``) are cut by the same rule
without ever being made dense (:func:`sparsify_sparse`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch


def default_threshold(vocab_size: int) -> float:
    """``1/sqrt(V)``: the paper's threshold."""
    if vocab_size <= 0:
        raise ValueError(f"vocabulary size must be positive, got {vocab_size}")
    return 1.0 / math.sqrt(vocab_size)


def sparsify(
    dense: torch.Tensor | np.ndarray, threshold: float | None = None, top_k: int | None = None
) -> sp.csr_matrix:
    """Rows of ``dense`` (B x V) -> float32 CSR keeping entries ``> threshold``, then the top k.

    ``threshold=None`` means the default ``1/sqrt(V)``; pass 0.0 to keep every positive entry.
    A scipy sparse matrix is cut as it is (:func:`sparsify_sparse`).
    """
    if sp.issparse(dense):
        return sparsify_sparse(dense, threshold, top_k)
    if isinstance(dense, torch.Tensor) and dense.device.type != "cpu":
        return sparsify_on_device(dense, threshold, top_k)
    if isinstance(dense, torch.Tensor):
        dense = dense.detach().float().cpu().numpy()
    dense = np.asarray(dense, dtype=np.float32)
    if dense.ndim == 1:
        dense = dense[None]
    if dense.ndim != 2:
        raise ValueError(f"expected a (batch, vocab) array, got shape {dense.shape}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    limit = default_threshold(dense.shape[1]) if threshold is None else float(threshold)
    kept = np.where(dense > limit, dense, 0.0).astype(np.float32)
    if top_k is not None and top_k < dense.shape[1]:
        # zero everything below each row's k-th largest kept value (ties broken by position)
        drop = np.argpartition(-kept, top_k, axis=1)[:, top_k:]
        np.put_along_axis(kept, drop, 0.0, axis=1)
    out = sp.csr_matrix(kept)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def sparsify_sparse(
    rows: sp.spmatrix | sp.sparray, threshold: float | None = None, top_k: int | None = None
) -> sp.csr_matrix:
    """:func:`sparsify` of a sparse (B x V) matrix: the same rows (ties in top-k aside), its
    implicit zeros never materialised. Like ``model.lexical.l2norm_rows`` it takes rows that
    may be unsorted but store no column twice; the kept entries come out sorted."""
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    rows = sp.csr_matrix(rows, dtype=np.float32)
    limit = default_threshold(rows.shape[1]) if threshold is None else float(threshold)
    kept = np.flatnonzero(rows.data > limit)  # before sorting: the threshold drops most
    indptr = np.searchsorted(kept, rows.indptr).astype(rows.indices.dtype)
    out = sp.csr_matrix((rows.data.take(kept), rows.indices.take(kept), indptr), shape=rows.shape)
    if top_k is not None:
        for r in np.flatnonzero(np.diff(out.indptr) > top_k):
            values = out.data[out.indptr[r] : out.indptr[r + 1]]  # a view: zeroed in place
            values[np.argpartition(-values, top_k)[top_k:]] = 0.0
        out.eliminate_zeros()
    if out.shape[0] < 32:  # a few rows: sort each (the counting sort below costs O(V))
        out.sort_indices()
        return out
    return out.tocsc().tocsr()  # sorted by two counting passes: faster than sorting each row


def sparsify_on_device(
    dense: torch.Tensor, threshold: float | None = None, top_k: int | None = None
) -> sp.csr_matrix:
    """:func:`sparsify` computed on the tensor's device; the same rows (ties in top-k aside)."""
    dense = dense.detach().float()
    if dense.dim() == 1:
        dense = dense[None]
    if dense.dim() != 2:
        raise ValueError(f"expected a (batch, vocab) tensor, got shape {tuple(dense.shape)}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    rows, vocab = dense.shape
    limit = default_threshold(vocab) if threshold is None else float(threshold)
    kept = torch.where(dense > limit, dense, torch.zeros((), device=dense.device))
    if top_k is not None and top_k < vocab:
        top = kept.topk(top_k, dim=1)
        kept = torch.zeros_like(kept).scatter_(1, top.indices, top.values)
    where = kept.nonzero()  # row-major: columns sorted within each row (one host sync)
    values = kept[where[:, 0], where[:, 1]].cpu().numpy()
    coords = where.cpu().numpy()
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(coords[:, 0], minlength=rows), out=indptr[1:])
    return sp.csr_matrix((values, coords[:, 1], indptr), shape=(rows, vocab), dtype=np.float32)


def active_counts(rows: sp.csr_matrix) -> np.ndarray:
    """Number of active words per row."""
    return np.diff(rows.indptr)


def keep_heaviest(rows: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` heaviest entries (ties: the lower word index first), the rest dropped;
    a row with at most ``k`` is kept whole. Unlike the top-k cut of :func:`sparsify` (ties by
    position in a partition), which words survive is fully determined, so an image's stored row
    does not depend on how its batch was cut."""
    if k <= 0:
        raise ValueError(f"a word budget must be positive, got {k}")
    rows = sp.csr_matrix(rows, dtype=np.float32)
    rows.sort_indices()
    lengths = np.diff(rows.indptr)
    keep = np.ones(rows.nnz, dtype=bool)
    for r in np.flatnonzero(lengths > k):
        a, b = rows.indptr[r], rows.indptr[r + 1]
        order = np.lexsort((rows.indices[a:b], -rows.data[a:b]))  # heaviest, then lower index
        keep[a + order[k:]] = False
    kept = np.cumsum(np.concatenate([[0], keep]))[rows.indptr]
    return sp.csr_matrix(
        (rows.data[keep], rows.indices[keep], kept.astype(rows.indptr.dtype)), shape=rows.shape
    )
