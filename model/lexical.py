"""The lexical mapper of both encoders: scores over the vocabulary -> lexical vectors.

``s = l2norm(elu1p(x @ Z.T))``; for images the per-patch scores are max-pooled over patches.
Because ``elu1p`` is monotonic, ``max_l elu1p(x_l) == elu1p(max_l x_l)``, so we pool the raw scores
and apply ``elu1p`` once. The raw score tensor is B x L x V (4.4M floats per image at V=17k), so
the pool runs over vocabulary chunks: each chunk's B x L x c block is freed as soon as its max is
taken, and ``Tensor.max(dim)`` keeps only the argmax indices for its backward pass, so training
memory is bounded by one chunk as well.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive, smooth, and ~linear for positive scores."""
    return F.elu(x) + 1.0


L2_EPS = 1e-12  # F.normalize's floor on the norm, in both forms below


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=L2_EPS)


def l2norm_rows(rows: sp.csr_matrix) -> sp.csr_matrix:
    """:func:`l2norm` of each row of a sparse matrix, computed on its stored entries only (the
    implicit zeros add nothing to a norm): ``x / max(||x||, eps)`` in float32, as
    ``F.normalize`` computes it (tested against it). Returns a new float32 CSR matrix.

    The rows may be unsorted (a scipy product's are) but must not store a column twice (a
    product never does): summing duplicates would sort every row, the most expensive step of a
    query table's encoding, for entries the threshold then mostly drops."""
    out = sp.csr_matrix(rows, dtype=np.float32, copy=True)
    lengths = np.diff(out.indptr)
    squares = np.zeros(out.shape[0], dtype=np.float64)
    filled = lengths > 0  # reduceat gives an empty row the next row's first entry: skip those
    if out.nnz:
        sums = np.add.reduceat(np.square(out.data, dtype=np.float64), out.indptr[:-1][filled])
        squares[filled] = sums
    norms = np.maximum(np.sqrt(squares).astype(np.float32), np.float32(L2_EPS))
    out.data /= np.repeat(norms, lengths)
    return out


def max_pooled_scores(feats: torch.Tensor, codebook: torch.Tensor, chunk: int) -> torch.Tensor:
    """``max_l feats[:, l] @ codebook.T`` -> (B, V), over vocabulary chunks of size ``chunk``."""
    if feats.dim() != 3:
        raise ValueError(f"expected (batch, patches, dim) features, got {tuple(feats.shape)}")
    vocab = codebook.shape[0]
    if chunk >= vocab:
        return (feats @ codebook.T).max(dim=1).values
    parts = [
        (feats @ codebook[start : start + chunk].T).max(dim=1).values
        for start in range(0, vocab, chunk)
    ]
    return torch.cat(parts, dim=1)


def pooled_lexical(feats: torch.Tensor, codebook: torch.Tensor, chunk: int) -> torch.Tensor:
    """Image lexical vector: ``l2norm(max_l elu1p(a_l @ Z.T))``, float32."""
    return l2norm(elu1p(max_pooled_scores(feats, codebook, chunk).float()))


def patch_scores(feats: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Per-patch ``elu1p(a_l @ Z.T)`` -> (B, L, V), before normalisation, float32."""
    return elu1p((feats @ codebook.T).float())
