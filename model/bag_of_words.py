"""Bag-of-words lexical vectors: a text's own words, with no language model.

Used by the service's cheap ``words`` query mode and by the paper's BoW text-side ablation.
The text is tokenized with the model's tokenizer; each piece that is a vocabulary word counts
once per occurrence; the counts are L2-normalised. Pieces outside the vocabulary are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .vocabulary import Vocabulary


def bag_of_words(texts: Sequence[str], tokenizer: Any, vocabulary: Vocabulary) -> torch.Tensor:
    """(B, V) float32 unit vectors (all-zero rows for texts with no vocabulary word)."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string")
    out = torch.zeros(len(texts), len(vocabulary))
    for row, text in enumerate(texts):
        ids = tokenizer(text.lower(), add_special_tokens=False)["input_ids"]
        for index in vocabulary.indices_of_tokens(ids):
            out[row, index] += 1.0
    return torch.nn.functional.normalize(out, dim=-1)
