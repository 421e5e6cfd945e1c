"""How a model uses its vocabulary on an evaluation set (sparse vectors at the model threshold).

- active words: the average number of words per image and per text;
- most frequent words: the words active in the largest share of images (and of texts); a word
  on everywhere says nothing, which is what the overuse penalty fights;
- false activations: the share of the activation mass (sum of kept weights) that sits on words
  occurring in no caption of the set; for images also the share on words absent from the
  image's *own* captions. Expansion to related words is the point of a lexical model, so these
  are not errors one by one, but a model that piles its mass on unrelated words is suspect.

Caption words are found as ``model.bag_of_words`` finds them: the caption's tokenizer pieces
that are vocabulary words.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from model import Vocabulary


def caption_word_matrix(
    captions: list[str], tokenizer: Any, vocabulary: Vocabulary
) -> sp.csr_matrix:
    """(M, V) 0/1 matrix: which vocabulary words each caption contains."""
    rows, cols = [], []
    for row, text in enumerate(captions):
        ids = tokenizer(text.lower(), add_special_tokens=False)["input_ids"]
        for index in set(vocabulary.indices_of_tokens(ids)):
            rows.append(row)
            cols.append(index)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(captions), len(vocabulary)))


def most_frequent(rows: sp.csr_matrix, vocabulary: Vocabulary, top: int) -> list[dict[str, Any]]:
    share = np.asarray((rows > 0).mean(axis=0)).ravel()
    order = np.argsort(-share, kind="stable")[:top]
    return [
        {"word": vocabulary.words[i], "share": round(float(share[i]), 4)}
        for i in order
        if share[i] > 0
    ]


def _mass_share(rows: sp.csr_matrix, allowed: sp.csr_matrix | np.ndarray) -> float:
    """Share of the total weight of ``rows`` that falls outside ``allowed`` (0/1 mask)."""
    total = float(rows.sum())
    if total == 0:
        return float("nan")
    inside = float(rows.multiply(allowed).sum())
    return 1.0 - inside / total


def vocabulary_usage(
    image_rows: sp.csr_matrix,
    text_rows: sp.csr_matrix,
    caption_words: sp.csr_matrix,
    text_image: np.ndarray,
    vocabulary: Vocabulary,
    top: int = 20,
) -> dict[str, Any]:
    in_any_caption = (np.asarray(caption_words.sum(axis=0)).ravel() > 0).astype(np.float32)[None, :]
    to_image = sp.csr_matrix(
        (np.ones(len(text_image), dtype=np.float32), (text_image, np.arange(len(text_image)))),
        shape=(image_rows.shape[0], len(text_image)),
    )
    own_words = (to_image @ caption_words) > 0
    return {
        "active_words_image": float(np.diff(image_rows.indptr).mean()),
        "active_words_text": float(np.diff(text_rows.indptr).mean()),
        "caption_vocabulary_size": int(in_any_caption.sum()),
        "most_frequent_image_words": most_frequent(image_rows, vocabulary, top),
        "most_frequent_text_words": most_frequent(text_rows, vocabulary, top),
        "image_false_activation_share": _mass_share(image_rows, in_any_caption),
        "image_off_own_captions_share": _mass_share(image_rows, own_words),
        "text_false_activation_share": _mass_share(text_rows, in_any_caption),
    }
