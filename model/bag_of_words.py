"""Bag-of-words lexical vectors: a text's own words, with no language model.

Used by the service's cheap ``words`` query mode and by the paper's BoW text-side ablation.
The text is tokenized with the model's tokenizer; each piece that is a vocabulary word counts
once per occurrence; the counts are L2-normalised. Pieces outside the vocabulary are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .vocabulary import Vocabulary


def bag_of_words(texts: Sequence[str], tokenizer: Any, vocabulary: Vocabulary) -> torch.Tensor:
    """(B, V) float32 unit vectors (all-zero rows for texts with no vocabulary word)."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string")
    out = torch.zeros(len(texts), len(vocabulary))
    for row, text in enumerate(texts):
        indices, weights = word_weights(text, tokenizer, vocabulary)
        out[row, torch.from_numpy(indices.astype(np.int64))] = torch.from_numpy(weights)
    return out


def bag_of_words_row(text: str, tokenizer: Any, vocabulary: Vocabulary) -> sp.csr_matrix:
    """One text's bag of words as a 1 x V float32 CSR row: the same values as its
    :func:`bag_of_words` row, built without torch.

    The service builds words-mode queries on its event loop, where every torch call released
    and re-took the GIL; with the search threads busy, each re-take waited up to a switch
    interval, which made this ~1 ms of every words-mode request (py-spy under load).
    """
    indices, weights = word_weights(text, tokenizer, vocabulary)
    return sp.csr_matrix((weights, indices, np.array([0, len(indices)])), (1, len(vocabulary)))


def word_weights(
    text: str, tokenizer: Any, vocabulary: Vocabulary
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted int32 vocabulary indices, float32 weights) of one text: counts over their L2 norm.

    Float32 throughout with a correctly rounded square root, as ``torch.nn.functional.normalize``
    computes it, so the weights equal what the torch form gave (tested)."""
    ids = tokenizer(text.lower(), add_special_tokens=False)["input_ids"]
    found = np.asarray(vocabulary.indices_of_tokens(ids), dtype=np.int32)
    indices, counts = np.unique(found, return_counts=True)
    weights = counts.astype(np.float32)
    if len(weights):
        weights /= np.sqrt(np.sum(weights * weights, dtype=np.float32))
    return indices, weights  # np.unique keeps int32
