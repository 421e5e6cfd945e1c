"""Query vectors: text -> sparse lexical vector, and the edits a user can make to it.

Three modes build the vector from text. ``model`` runs the LexVLA text encoder (the LLM) and
sparsifies its output with the checkpoint's threshold, like the indexed images. ``table`` sums the
rows of the query's tokens in the checkpoint's query table (``model.query_table``, distilled from
the text encoder), normalised and thresholded like a model query: no LLM call, but the words a
caption implies as well as its own; a checkpoint without a table answers 422. ``words`` uses the
query's own words through the tokenizer (``model.bag_of_words``): no LLM call, exact words only,
weights = normalised counts. A request that names no mode gets ``model``, with or without a GPU
(the table is the fast choice a client makes; ``docs/results-query-table.md`` has the figures).

Edits work on the vector and on which images may match, so they compose with every mode (and
with image queries):

- ``exclude`` (inline ``-word``): a filter, no image that *has* the word is returned (the rule of
  ``indexer.filters``: the word is among the image's strongest), and the word's query weight is
  set to zero.
- ``require`` (inline ``+word``): a filter, only images that have every required word are
  returned; the query vector is not changed. A query of only ``+words`` searches for them.
- ``boost``: ``{word: factor}`` multiplies a word's weight; a word the query does not have yet is
  added with ``factor`` times the mean weight of the query's words (so ``{"red": 1.0}`` adds
  "red" as an average word of the query). A factor of 0 removes the word from the query (the
  old meaning of ``-word``: ignore it, filter nothing). Exclusion wins.

Inline, a token that starts with ``+`` or ``-`` (``dog -cat +grass``) is removed from the text; a
lone ``+`` or ``-``, or one inside a word (``t-shirt``), stays.

Weights are never re-normalised after an edit: a hit's score stays the plain sum of the per-word
contributions ``q_j * d_j`` that the response shows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from indexer.filters import WordFilter
from indexer.scoring import top_words as top_words  # the routes import it from here
from model.vocabulary import Vocabulary
from service.core.errors import InvalidInput

_INLINE_FILTER = re.compile(r"(?<!\S)([+-])(\S+)")


def split_filters(text: str) -> tuple[str, list[str], list[str]]:
    """``"dog +grass -cat"`` -> ``("dog", ["grass"], ["cat"])`` (text, required, excluded)."""
    found = _INLINE_FILTER.findall(text)
    if not found:
        return text.strip(), [], []
    kept = _INLINE_FILTER.sub(" ", text)
    required = [w for sign, w in found if sign == "+"]
    excluded = [w for sign, w in found if sign == "-"]
    return " ".join(kept.split()), required, excluded


def word_index(vocabulary: Vocabulary, word: str, where: str, loc: Sequence[str | int]) -> int:
    """The vocabulary index of ``word``; InvalidInput (422) naming the word otherwise."""
    try:
        return vocabulary.index(word)
    except KeyError:
        raise InvalidInput(
            f"unknown word {word!r} in {where}: it is not one of the model's "
            f"{len(vocabulary):,} vocabulary words (lower-case whole words such as 'dog')",
            loc=loc,
        ) from None


def row_from_weights(weights: Mapping[int, float], size: int) -> sp.csr_matrix:
    """{index: weight} -> a sorted 1 x V float32 CSR row without zeros."""
    items = sorted((i, w) for i, w in weights.items() if w > 0)
    cols = np.array([i for i, _ in items], dtype=np.int32)
    vals = np.array([w for _, w in items], dtype=np.float32)
    return sp.csr_matrix((vals, cols, np.array([0, len(items)])), shape=(1, size))


@dataclass(frozen=True)
class QueryEdits:
    """Filters and boosts resolved to vocabulary indices (checked before any encoding)."""

    exclude: tuple[int, ...] = ()
    boost: tuple[tuple[int, float], ...] = ()
    require: tuple[int, ...] = ()

    @property
    def filters(self) -> WordFilter | None:
        if not self.exclude and not self.require:
            return None
        return WordFilter(frozenset(self.require), frozenset(self.exclude))


def resolve_edits(
    vocabulary: Vocabulary,
    exclude: Sequence[str] = (),
    boost: Mapping[str, float] | None = None,
    inline_exclude: Sequence[str] = (),
    require: Sequence[str] = (),
    inline_require: Sequence[str] = (),
) -> QueryEdits:
    """Look every word up; InvalidInput (422) names the first unknown one and where it was."""
    dropped = [
        word_index(vocabulary, w, "exclude", ("body", "exclude", n)) for n, w in enumerate(exclude)
    ]
    dropped += [
        word_index(vocabulary, w, "the query's -exclusions", ("body", "query"))
        for w in inline_exclude
    ]
    kept = [
        word_index(vocabulary, w, "require", ("body", "require", n)) for n, w in enumerate(require)
    ]
    kept += [
        word_index(vocabulary, w, "the query's +requirements", ("body", "query"))
        for w in inline_require
    ]
    both = sorted(set(dropped) & set(kept))
    if both:
        raise InvalidInput(
            f"the word {vocabulary.words[both[0]]!r} is both required and excluded",
            loc=("body", "query"),
        )
    boosts = [
        (word_index(vocabulary, w, "boost", ("body", "boost", w)), float(f))
        for w, f in (boost or {}).items()
    ]
    return QueryEdits(tuple(dict.fromkeys(dropped)), tuple(boosts), tuple(dict.fromkeys(kept)))


def apply_edits(row: sp.csr_matrix, edits: QueryEdits) -> sp.csr_matrix:
    """Boosts, then exclusions (see the module docstring); returns a new row."""
    if not edits.exclude and not edits.boost:
        return row
    weights = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
    mean = float(np.mean(row.data)) if row.nnz else 1.0 / np.sqrt(row.shape[1])
    for i, factor in edits.boost:
        weights[i] = weights[i] * factor if i in weights else mean * factor
    for i in edits.exclude:
        weights.pop(i, None)
    return row_from_weights(weights, row.shape[1])
