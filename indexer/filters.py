"""Word filters: when an image *has* a word, and the filter every engine applies the same way.

A LexVLA image row is a weight per vocabulary word (~1,000 active of ~17k for the paper's
model). Ranking uses every weight; a *filter* needs a yes/no answer, "does this image show a
star?". The rule, computable from the image's float row alone:

    image i has word w  <=>  d_iw >= cut_i,
    cut_i = max(STRONG_FRACTION * max_j d_ij,  the STRONG_TOP-th largest weight of row i)

i.e. the word is among the image's STRONG_TOP heaviest words *and* its weight is at least
STRONG_FRACTION of the image's heaviest weight (weights tied with the cut all count). Relative
to the image's own maximum, because rows are L2-normalised and an image about many things has
lower weights everywhere; capped at a top-N so a flat row cannot "have" hundreds of words, and so
a payload of strong words (the Qdrant engine stores them) stays small.

Why 0.35 and 32: on the tiny LexVLA of ``lexvla demo`` and its held-out shape images, "has
word w" was scored against what each image shows, for cuts from 0.3 to 0.6 (the table:
docs/lab-notes.md, "The word filter's cut"). Shape words are the hard case: a small shape can
weigh a small fraction of its image's heaviest word, while shapes the model confuses weigh a lot
on images without them. An exclusion that lets a faint star through fails the user who typed
``-star``, while an exclusion that also drops a few images without one costs little, so the cut
sits below the F1 optimum. The top-32 cap bounds what a flat row (a real photo about many
things) can claim. Both constants are recorded in every index manifest (``rule``); an index
built with another rule is refused (``lexvla index reindex``).

Filter semantics (every engine, tested against the brute-force oracle :func:`allowed_rows`):
``exclude`` drops an image that has *any* excluded word; ``require`` keeps only images that have
*all* required words. An empty filter allows everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

STRONG_FRACTION = 0.35
STRONG_TOP = 32
RULE = {"fraction": STRONG_FRACTION, "top": STRONG_TOP}
_CHUNK_ENTRIES = 1 << 24  # row entries handled at once by strong_cuts (bounded memory)


@dataclass(frozen=True)
class WordFilter:
    """Words (vocabulary indices) an image must have all of, and must have none of."""

    require: frozenset[int] = field(default_factory=frozenset)
    exclude: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "require", frozenset(int(w) for w in self.require))
        object.__setattr__(self, "exclude", frozenset(int(w) for w in self.exclude))
        both = self.require & self.exclude
        if both:
            raise ValueError(f"words {sorted(both)} are both required and excluded")

    @property
    def empty(self) -> bool:
        return not self.require and not self.exclude

    def allows(self, words: Iterable[int]) -> bool:
        """Whether an image whose strong words are ``words`` passes the filter."""
        have = set(int(w) for w in words)
        return self.require <= have and not (self.exclude & have)

    def check(self, vocabulary_size: int) -> None:
        bad = [w for w in self.require | self.exclude if not 0 <= w < vocabulary_size]
        if bad:
            raise ValueError(
                f"filter words {sorted(bad)} are outside the vocabulary (0..{vocabulary_size - 1})"
            )


def active(filters: WordFilter | None) -> bool:
    return filters is not None and not filters.empty


def strong_cut(data: np.ndarray) -> float:
    """The weight a word of this row needs for the image to *have* it (inf for an empty row)."""
    if len(data) == 0:
        return float("inf")
    ordered = np.sort(np.asarray(data, dtype=np.float32))[::-1]
    nth = ordered[min(STRONG_TOP, len(ordered)) - 1]
    return float(max(np.float32(STRONG_FRACTION) * ordered[0], nth))


def strong_words(indices: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Sorted vocabulary indices of the words one image row (``indices``/``data``) has."""
    data = np.asarray(data, dtype=np.float32)
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.asarray(indices)[data >= strong_cut(data)].astype(np.int64))


def strong_cuts(rows: sp.csr_matrix) -> np.ndarray:
    """:func:`strong_cut` of every row of a CSR matrix (float32; inf for empty rows).

    Vectorised and chunked: a row's maximum and the entries above the fraction of it are found
    in one pass; only rows with more than ``STRONG_TOP`` such entries sort those entries.
    """
    n = rows.shape[0]
    cuts = np.full(n, np.inf, dtype=np.float32)
    indptr = rows.indptr
    start = 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + _CHUNK_ENTRIES, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        _chunk_cuts(rows, start, stop, cuts)
        start = stop
    return cuts


def _chunk_cuts(rows: sp.csr_matrix, start: int, stop: int, cuts: np.ndarray) -> None:
    a, b = int(rows.indptr[start]), int(rows.indptr[stop])
    if a == b:
        return
    data = np.asarray(rows.data[a:b], dtype=np.float32)
    lengths = np.diff(rows.indptr[start : stop + 1]).astype(np.int64)
    nonempty = np.flatnonzero(lengths)
    offsets = (rows.indptr[start:stop] - a)[nonempty]
    row_max = np.maximum.reduceat(data, offsets)
    base = np.float32(STRONG_FRACTION) * row_max
    owner = np.repeat(np.arange(len(nonempty)), lengths[nonempty])
    above = data >= base[owner]
    counts = np.bincount(owner[above], minlength=len(nonempty))
    local = base.copy()
    crowded = np.flatnonzero(counts > STRONG_TOP)
    if len(crowded):  # the STRONG_TOP-th largest among the entries above the fraction
        keep = above & np.isin(owner, crowded)
        o, d = owner[keep], data[keep]
        order = np.lexsort((-d, o))
        o, d = o[order], d[order]
        first = np.searchsorted(o, crowded)
        local[crowded] = d[first + STRONG_TOP - 1]
    cuts[start + nonempty] = local


def has_matrix(rows: sp.csr_matrix) -> sp.csr_matrix:
    """Images x words boolean CSR: entry (i, w) is stored when image i has word w (chunked)."""
    rows = sp.csr_matrix(rows)
    cuts = strong_cuts(rows)
    n, parts = rows.shape[0], []
    start = 0
    while start < n:
        stop = int(np.searchsorted(rows.indptr, rows.indptr[start] + _CHUNK_ENTRIES, side="right"))
        stop = min(n, max(stop - 1, start + 1))
        a, b = int(rows.indptr[start]), int(rows.indptr[stop])
        owner = np.repeat(np.arange(start, stop), np.diff(rows.indptr[start : stop + 1]))
        keep = np.asarray(rows.data[a:b], dtype=np.float32) >= cuts[owner]
        parts.append((owner[keep], rows.indices[a:b][keep]))
        start = stop
    r = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    c = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    return sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=rows.shape)


def allowed_by_lists(
    filters: WordFilter, n: int, having: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Boolean mask over ``n`` rows from ``having(w)`` = the rows that have word ``w``."""
    allowed = np.ones(n, dtype=bool)
    for w in filters.exclude:
        allowed[having(w)] = False
    for w in filters.require:
        required = np.zeros(n, dtype=bool)
        required[having(w)] = True
        allowed &= required
    return allowed


def allowed_rows(filters: WordFilter | None, rows: sp.csr_matrix) -> np.ndarray:
    """Which rows of an images x words matrix pass ``filters`` (the reference implementation)."""
    if not active(filters):
        return np.ones(rows.shape[0], dtype=bool)
    assert filters is not None
    return allowed_by_has(filters, has_matrix(rows).tocsc())


def allowed_by_has(filters: WordFilter, has: sp.csc_matrix) -> np.ndarray:
    """:func:`allowed_rows` from a :func:`has_matrix` in CSC form (engines cache that)."""
    return allowed_by_lists(
        filters, has.shape[0], lambda w: has.indices[has.indptr[w] : has.indptr[w + 1]]
    )


def posting_having(indices: np.ndarray, data: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Rows of one posting list (``indices``/``data`` of a words x images CSR row) having it."""
    return indices[data >= cuts[indices]]


def check_rule(params: dict[str, object], where: str) -> None:
    """Refuse an index whose strong words were computed with another rule than this code's."""
    rule = params.get("rule")
    if rule is not None and rule != RULE:
        raise ValueError(
            f"{where} stores strong words computed with rule {rule}, this code uses {RULE}; "
            "rebuild the index from the store (`lexvla index reindex`)"
        )
