"""Batches and data specs: reproducible per-sample augmentation, eval fields, build_dataset."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import Skipped
from model.preprocessing import eval_transform
from training.data import (
    COLOURS,
    Collate,
    ManifestDataset,
    ShapesDataset,
    ShardDataset,
    build_dataset,
    collate,
    write_shards,
)

SIZE = 32


@pytest.fixture(scope="module")
def shapes() -> list[dict]:
    dataset = ShapesDataset(6, seed=4, image_size=48)
    return [dataset[i] for i in range(len(dataset))]


def test_train_batches_are_reproducible_per_sample(shapes: list[dict]) -> None:
    batch = collate(shapes, image_size=SIZE, train=True, seed=1, epoch=0)
    again = collate(shapes, image_size=SIZE, train=True, seed=1, epoch=0)
    assert batch["pixel_values"].shape == (6, 3, SIZE, SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], again["pixel_values"])
    assert batch["captions"] == again["captions"]
    # a sample's augmentation does not depend on its batch-mates or its place in the batch
    alone = collate(shapes[3:4], image_size=SIZE, train=True, seed=1, epoch=0)
    assert torch.equal(alone["pixel_values"][0], batch["pixel_values"][3])
    assert alone["captions"][0] == batch["captions"][3]
    other_epoch = collate(shapes, image_size=SIZE, train=True, seed=1, epoch=1)
    assert not torch.equal(other_epoch["pixel_values"], batch["pixel_values"])
    for sample, caption in zip(shapes, batch["captions"], strict=True):
        assert caption in sample["captions"]
    chosen = {
        collate(shapes[:1], image_size=SIZE, seed=1, epoch=e)["captions"][0] for e in range(12)
    }
    assert len(chosen) > 1  # training sees the paraphrases
    fixed = collate(shapes, image_size=SIZE, seed=1, random_caption=False)
    assert fixed["captions"] == [s["caption"] for s in shapes]


def test_eval_batches_use_eval_transform_and_carry_aligned_masks(shapes: list[dict]) -> None:
    batch = collate(shapes, image_size=SIZE, train=False)
    expected = torch.stack([eval_transform(s["image"], SIZE) for s in shapes])
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["captions"] == [s["caption"] for s in shapes]
    assert batch["caption_sets"] == [s["captions"] for s in shapes]
    assert set(batch["masks"]) == {"kind", "colour", "instance"}
    colour = batch["masks"]["colour"]
    assert colour.shape == (6, SIZE, SIZE) and colour.dtype == torch.uint8
    # masks follow the image geometry: a down-scaled shape is where its mask says
    for i, sample in enumerate(shapes):
        for shape in sample["shapes"]:
            label = 1 + COLOURS.index(shape.colour)
            ys, xs = np.nonzero(colour[i].numpy() == label)
            scale = SIZE / 48
            assert abs(xs.mean() - shape.x * scale) < 2 and abs(ys.mean() - shape.y * scale) < 2
    same = collate(shapes, image_size=48, train=False)["masks"]["kind"]
    assert all(np.array_equal(same[i].numpy(), s["masks"]["kind"]) for i, s in enumerate(shapes))


def test_skipped_markers_are_dropped_and_counted(shapes: list[dict]) -> None:
    items: list[dict[str, Any] | Skipped] = [shapes[0], Skipped("missing_file", "a.jpg")]
    items += [Skipped("missing_file", "b.jpg")]
    items += [Skipped("empty_caption", "c"), shapes[1]]
    batch = collate(items, image_size=SIZE)
    assert batch["pixel_values"].shape[0] == 2 and batch["keys"] == [
        shapes[0]["key"],
        shapes[1]["key"],
    ]
    assert batch["skipped"] == {"missing_file": 2, "empty_caption": 1}
    empty = collate([Skipped("corrupt_image", "x")], image_size=SIZE, train=False)
    assert empty["pixel_values"].shape == (0, 3, SIZE, SIZE) and empty["captions"] == []


def test_collate_object_follows_its_epoch(shapes: list[dict]) -> None:
    collate_fn = Collate(image_size=SIZE, train=True, seed=3)
    first = collate_fn(shapes)["pixel_values"]
    collate_fn.set_epoch(5)
    assert torch.equal(
        collate_fn(shapes)["pixel_values"],
        collate(shapes, image_size=SIZE, seed=3, epoch=5)["pixel_values"],
    )
    assert not torch.equal(collate_fn(shapes)["pixel_values"], first)


def test_build_dataset_from_specs(tmp_path: Path) -> None:
    train = build_dataset("shapes:12", "train", seed=2, image_size=40)
    val = build_dataset("shapes:12", "val", seed=2, image_size=40)
    assert isinstance(train, ShapesDataset) and len(train) == 12
    assert train[0]["image"].size == (40, 40)
    assert train[0]["key"] != val[0]["key"]
    assert train[0]["image"].tobytes() != val[0]["image"].tobytes()

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], ["x.png", "one"], ["x.png", "two"]])
    rows = build_dataset(str(tmp_path / "m.csv"))
    grouped = build_dataset(str(tmp_path / "m.csv"), "val")
    assert isinstance(rows, ManifestDataset) and len(rows) == 2
    assert isinstance(grouped, ManifestDataset) and len(grouped) == 1

    source = ShapesDataset(4, seed=0, image_size=16)
    write_shards((source[i] for i in range(4)), tmp_path / "shards", samples_per_shard=2)
    streamed = build_dataset(str(tmp_path / "shards"), rank=1, world_size=2)
    assert isinstance(streamed, ShardDataset) and streamed.shuffle and streamed.rank == 1
    evaluated = build_dataset(str(tmp_path / "shards" / "{00000..00001}.tar"), "val")
    assert isinstance(evaluated, ShardDataset) and not evaluated.shuffle
    assert len(evaluated.shards) == 2

    for bad in ("shapes:many", str(tmp_path / "nothing-*.tar")):
        with pytest.raises(ValueError, match=r"shapes:N|expected"):
            build_dataset(bad)
