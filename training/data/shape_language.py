"""The words and grammar of the synthetic shapes world (``training.data.shapes`` draws it).

Every caption is generated from what was drawn, so it is true of the image: a relation word
compares the two shapes' centroids along the axis where they are further apart (``left of`` when
the first shape's centre is further left than the second's, and the horizontal distance is at
least the vertical one). Colours are distinct within an image, so "the blue square" always names
one shape. Captions hold lower-case words only, no punctuation and never the word "colour", so
a word-level tokenizer built from :data:`WORDS` covers every caption exactly. Every word, and
so every class name PatchDis needs, is a single piece ("▁red") of the Llama 2 tokenizer, which
is why the palette has brown rather than purple ("▁pur" + "ple").

Grammar (NP = noun phrase ``a|an [small|large] COLOUR KIND``, REL = a relation phrase)::

    one shape      NP                              "a large brown star"
    two shapes     NP REL NP                       "a large red circle left of a small blue square"
    three shapes   NP REL NP and NP REL the C K    "... and a small green triangle below the blue square"

Paraphrases (``captions[1:]``) swap subject and object with the inverse relation, use the other
phrasing of each relation ("to the left of", "over", "under"), drop the sizes, prefix
"a picture of" / "a drawing of", or list the shapes without relations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow", "orange", "brown", "white", "black")
SHAPE_KINDS = ("circle", "square", "triangle", "star", "heart")
SIZES = ("small", "large")

# Canonical phrase first; the second is used by paraphrases.
RELATION_PHRASES = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_PREFIXES = ("a picture of", "a drawing of")
_FUNCTION_WORDS = ("a", "an", "the", "and", "with", "single")


@dataclass(frozen=True)
class Shape:
    """One drawn shape: what it is (the caption's words) and where (pixels, image coordinates).

    ``x``, ``y`` is the centroid (y grows downwards); ``radius`` is the radius of the circle with
    the same area (so "large" means the same area for every kind); ``extent`` is the distance
    from the centroid to the farthest point, used to keep shapes apart; ``angle`` in degrees.
    """

    kind: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    extent: float
    angle: float = 0.0


def _all_words() -> tuple[str, ...]:
    words = {*COLOURS, *SHAPE_KINDS, *SIZES, *_FUNCTION_WORDS}
    for phrase in (*_PREFIXES, *(p for ps in RELATION_PHRASES.values() for p in ps)):
        words.update(phrase.split())
    return tuple(sorted(words))


# Every word any caption can contain, sorted: the vocabulary of a tiny word-level tokenizer.
WORDS = _all_words()
# The words that say what is drawn (the nouns and adjectives of a caption, as the paper's
# bag-of-words ablation takes them): what a one-word summary of a caption can be.
SHAPE_WORDS = (*COLOURS, *SHAPE_KINDS, *SIZES)


def shape_words(caption: str) -> list[str]:
    """The caption's :data:`SHAPE_WORDS`, each once, in order of appearance."""
    return list(dict.fromkeys(w for w in caption.split() if w in SHAPE_WORDS))


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b`` ("left", "right", "above", "below"), by centroids."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(shape: Shape, sized: bool = True) -> str:
    """ "a large red circle" (or "an orange star" without the size)."""
    words = f"{shape.size} {shape.colour} {shape.kind}" if sized else f"{shape.colour} {shape.kind}"
    return with_article(words)


def _clause(a: Shape, b: Shape, phrasing: int, sized: bool, definite_b: bool = False) -> str:
    rel = RELATION_PHRASES[relation(a, b)][phrasing]
    obj = f"the {b.colour} {b.kind}" if definite_b else noun_phrase(b, sized)
    return f"{noun_phrase(a, sized)} {rel} {obj}"


def captions(shapes: Sequence[Shape], rng: random.Random) -> list[str]:
    """The canonical caption followed by distinct paraphrases, all true of ``shapes``.

    ``rng`` picks which shape the third one is related to, so captions are deterministic for
    a seeded sample. The order of ``shapes`` is the order they are mentioned in.
    """
    if not 1 <= len(shapes) <= 3:
        raise ValueError(f"captions describe 1 to 3 shapes, got {len(shapes)}")
    if len(shapes) == 1:
        (a,) = shapes
        options = [
            noun_phrase(a),
            noun_phrase(a, sized=False),
            f"{_PREFIXES[0]} {noun_phrase(a)}",
            f"{_PREFIXES[1]} {noun_phrase(a, sized=False)}",
            f"a single {a.size} {a.colour} {a.kind}",
        ]
    else:
        a, b = shapes[0], shapes[1]
        third = shapes[2] if len(shapes) == 3 else None
        anchor = shapes[rng.randrange(2)]

        def tail(phrasing: int, sized: bool) -> str:
            if third is None:
                return ""
            return f" and {_clause(third, anchor, phrasing, sized, definite_b=True)}"

        canonical = _clause(a, b, 0, True) + tail(0, True)
        listed = [noun_phrase(s) for s in shapes]
        options = [
            canonical,
            _clause(b, a, 0, True) + tail(0, True),
            _clause(a, b, 1, True) + tail(1, True),
            _clause(a, b, 0, False) + tail(0, False),
            f"{_PREFIXES[0]} {canonical}",
            f"{listed[0]} with " + " and ".join(listed[1:]),
        ]
    return list(dict.fromkeys(options))  # distinct, canonical first
