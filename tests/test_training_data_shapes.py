"""The synthetic shapes set: deterministic, and every caption is true of the drawing and masks."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    COLOUR_RGB,
    COLOURS,
    MASK_CLASSES,
    SHAPE_KINDS,
    WORDS,
    ShapesDataset,
    render_sample,
)
from training.data.shape_language import Shape, captions, relation

TOKENIZER = (
    Path(__file__).resolve().parents[1].parent / "shared/data/llama2-tokenizer/tokenizer.model"
)
SIDE = 96  # small images keep the many-sample checks fast; geometry scales with the side
N = 150

NP = r"an? (small|large) (\w+) (\w+)"
REL = r"(left of|right of|above|below)"
CANONICAL = re.compile(rf"^{NP}(?: {REL} {NP}(?: and {NP} {REL} the (\w+) (\w+))?)?$")
REL_NAME = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


def _digest(sample: dict) -> str:
    return hashlib.sha256(sample["image"].tobytes()).hexdigest()


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return [render_sample(i, seed=7, image_size=SIDE) for i in range(N)]


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _check_relation(rel: str, subject: tuple[float, float], obj: tuple[float, float]) -> None:
    """The relation holds between mask centroids along the axis where they are further apart."""
    dx, dy = obj[0] - subject[0], obj[1] - subject[1]
    if rel in ("left", "right"):
        assert abs(dx) >= abs(dy) - 1.0
        assert (dx > 0) if rel == "left" else (dx < 0)
    else:
        assert abs(dy) >= abs(dx) - 1.0
        assert (dy > 0) if rel == "above" else (dy < 0)


def test_same_seed_same_sample_regardless_of_dataset_size() -> None:
    a, b = ShapesDataset(5, seed=3, image_size=SIDE), ShapesDataset(50, seed=3, image_size=SIDE)
    for i in range(5):
        x, y = a[i], b[i]
        assert _digest(x) == _digest(y)
        assert x["captions"] == y["captions"] and x["shapes"] == y["shapes"]
        for name in ("kind", "colour", "instance"):
            assert np.array_equal(x["masks"][name], y["masks"][name])
    assert a[-1]["key"] == a[4]["key"]
    with pytest.raises(IndexError):
        a[5]


def test_other_seeds_and_splits_give_disjoint_samples() -> None:
    base = {_digest(render_sample(i, seed=0, image_size=SIDE)) for i in range(60)}
    other_seed = {_digest(render_sample(i, seed=1, image_size=SIDE)) for i in range(60)}
    other_split = {
        _digest(render_sample(i, seed=0, split="val", image_size=SIDE)) for i in range(60)
    }
    assert len(base) == 60
    assert not base & other_seed and not base & other_split


def test_masks_are_exactly_the_drawn_shapes(samples: list[dict]) -> None:
    named = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.int32)
    for sample in samples:
        pixels = np.asarray(sample["image"], dtype=np.int32)
        masks = sample["masks"]
        assert {m.dtype for m in masks.values()} == {np.dtype(np.uint8)}
        assert all(m.shape == (SIDE, SIDE) for m in masks.values())
        colours = [s.colour for s in sample["shapes"]]
        assert len(set(colours)) == len(colours)  # so "the blue square" names one shape
        for i, shape in enumerate(sample["shapes"], start=1):
            where = masks["instance"] == i
            assert where.sum() > 20
            assert np.all(masks["kind"][where] == 1 + SHAPE_KINDS.index(shape.kind))
            assert np.all(masks["colour"][where] == 1 + COLOURS.index(shape.colour))
            # every pixel of the shape is closest to the stated colour
            nearest = np.linalg.norm(pixels[where][:, None] - named[None], axis=2).argmin(axis=1)
            assert np.all(nearest == COLOURS.index(shape.colour))
        background = masks["instance"] == 0
        assert np.all(masks["kind"][background] == 0) and np.all(masks["colour"][background] == 0)
        gaps = np.linalg.norm(pixels[background][:, None] - named[None], axis=2)
        assert gaps.min() > 60, "the background must never look like a named colour"


def test_small_and_large_are_disjoint_areas(samples: list[dict]) -> None:
    areas: dict[str, list[int]] = {"small": [], "large": []}
    for sample in samples:
        for i, shape in enumerate(sample["shapes"], start=1):
            areas[shape.size].append(int((sample["masks"]["instance"] == i).sum()))
    assert areas["small"] and areas["large"]
    assert max(areas["small"]) < min(areas["large"])


def test_canonical_caption_matches_shapes_and_mask_centroids(samples: list[dict]) -> None:
    counts = set()
    for sample in samples:
        match = CANONICAL.match(sample["caption"])
        assert match, sample["caption"]
        groups = match.groups()
        stated = [groups[0:3]] + ([groups[4:7]] if groups[3] else [])
        stated += [groups[7:10]] if groups[7] else []
        drawn = [(s.size, s.colour, s.kind) for s in sample["shapes"]]
        assert sorted(stated) == sorted(drawn)
        counts.add(len(drawn))
        colour_mask = sample["masks"]["colour"]

        def centroid(colour: str, mask: np.ndarray = colour_mask) -> tuple[float, float]:
            return _centroid(mask == 1 + COLOURS.index(colour))

        if groups[3]:
            _check_relation(REL_NAME[groups[3]], centroid(groups[1]), centroid(groups[5]))
        if groups[7]:
            kind_of = {s.colour: s.kind for s in sample["shapes"]}
            assert kind_of[groups[11]] == groups[12]  # "the blue square" is the blue one
            _check_relation(REL_NAME[groups[10]], centroid(groups[8]), centroid(groups[11]))
    assert counts == {1, 2, 3}


def test_paraphrases_are_true_and_use_only_known_words(samples: list[dict]) -> None:
    inverse_seen = False
    for sample in samples:
        texts = sample["captions"]
        assert texts[0] == sample["caption"] and len(texts) == len(set(texts)) >= 4
        for text in texts:
            words = text.split()
            assert set(words) <= set(WORDS), text
            assert "colour" not in words and "color" not in words
            for shape in sample["shapes"]:
                assert shape.colour in words and shape.kind in words
            for i, word in enumerate(words[:-1]):  # articles agree with the next word
                if word in ("a", "an"):
                    assert (word == "an") == (words[i + 1][0] in "aeiou"), text
        if len(sample["shapes"]) == 2:
            a, b = sample["shapes"]
            inverse = {"left": "right", "right": "left", "above": "below", "below": "above"}
            swapped = f"{b.size} {b.colour} {b.kind}"
            assert texts[1].startswith(f"a {swapped}") or texts[1].startswith(f"an {swapped}")
            assert inverse[relation(a, b)] == relation(b, a)
            inverse_seen = True
    assert inverse_seen


def test_words_cover_every_caption_and_class_names_are_single_words() -> None:
    assert list(WORDS) == sorted(set(WORDS))
    for names in MASK_CLASSES.values():
        assert names[0] == "background"
        assert all(n in WORDS and n.isalpha() for n in names[1:])
    assert MASK_CLASSES["kind"][1:] == SHAPE_KINDS and MASK_CLASSES["colour"][1:] == COLOURS
    seen: set[str] = set()
    for i in range(300):
        for text in render_sample(i, seed=11, image_size=48)["captions"]:
            seen.update(text.split())
    assert seen <= set(WORDS)
    assert len(seen) >= len(WORDS) - 2  # the grammar really uses its vocabulary


@pytest.mark.skipif(not TOKENIZER.is_file(), reason="shared/data/llama2-tokenizer is not available")
def test_every_word_is_one_llama2_piece() -> None:
    """PatchDis scores class names as vocabulary words: each must be a single "▁word" piece."""
    sentencepiece = pytest.importorskip("sentencepiece")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))
    split = [w for w in WORDS if processor.piece_to_id("▁" + w) == processor.unk_id()]
    assert split == []


def test_relation_uses_the_dominant_axis() -> None:
    def at(x: float, y: float) -> Shape:
        return Shape("circle", "red", "small", x, y, 5.0, 5.0)

    assert relation(at(10, 50), at(60, 70)) == "left"
    assert relation(at(60, 50), at(10, 70)) == "right"
    assert relation(at(50, 10), at(70, 60)) == "above"
    assert relation(at(50, 60), at(70, 10)) == "below"
    with pytest.raises(ValueError):
        captions([], random.Random(0))


def test_a_full_size_sample_is_a_224_rgb_image_with_masks_of_its_size() -> None:
    """The default size (the models' input; generation speed is bench/shapes.py's)."""
    sample = render_sample(0, seed=5)
    assert sample["image"].size == (224, 224) and sample["image"].mode == "RGB"
    assert all(m.shape == (224, 224) for m in sample["masks"].values())
