"""The lexical mapper of both encoders: scores over the vocabulary -> lexical vectors.

``s = l2norm(elu1p(x @ Z.T))``; for images the per-patch scores are max-pooled over patches.
Because ``elu1p`` is monotonic, ``max_l elu1p(x_l) == elu1p(max_l x_l)``, so we pool the raw scores
and apply ``elu1p`` once. The raw score tensor is B x L x V (4.4M floats per image at V=17k), so
the pool runs over vocabulary chunks: each chunk's B x L x c block is freed as soon as its max is
taken, and ``Tensor.max(dim)`` keeps only the argmax indices for its backward pass, so training
memory is bounded by one chunk as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive, smooth, and ~linear for positive scores."""
    return F.elu(x) + 1.0


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


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
