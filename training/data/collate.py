"""Samples -> a batch for the model: transformed pixels, captions, and the bookkeeping fields.

The transforms are ``model.preprocessing``'s (``train_transform`` with random resized crop and
flip, ``eval_transform`` with resize and centre crop) so that training and indexing see images
the same way. Each sample gets its own ``random.Random`` seeded from ``(seed, epoch, key)``:
the augmentation of a sample depends neither on which worker processed it nor on what else is
in its batch, so a run is reproducible and a resumed run augments the remaining samples as the
uninterrupted one would have.

A batch is a dict:
- ``pixel_values``: float tensor (B, 3, S, S), B may be smaller than the number of samples
  given (``Skipped`` markers are dropped) and may be 0: a training loop must skip such a batch;
- ``captions``: list of B strings (training picks one of a sample's ``captions`` paraphrases at
  random when it has them; evaluation takes the canonical ``caption``);
- ``keys``: list of B sample keys;
- ``skipped``: counts by reason of the markers dropped (feed to ``SkipCounter.update``);
- ``positions``: the ``StreamIndex`` of every streamed item, usable or not (feed to
  ``StreamPosition.update``); empty for map-style datasets;
- evaluation only, when the samples have them: ``caption_sets`` (every caption of each image),
  ``image_ids`` (manifest ground truth) and ``masks`` (name -> uint8 tensor (B, S, S), resized
  and cropped exactly as the image was, for PatchDis).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.data import Skipped
from model.preprocessing import centre_crop, eval_transform, train_transform


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """The augmentation generator of one sample in one epoch (string seeds hash with SHA-512)."""
    return random.Random(f"augment:{seed}:{epoch}:{key}")


def _eval_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """A label map cut exactly as ``eval_transform`` cuts the image (nearest resampling)."""
    cropped = centre_crop(Image.fromarray(mask), size, Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(cropped, dtype=np.uint8))


def collate(
    samples: Sequence[dict[str, Any] | Skipped],
    *,
    image_size: int = 224,
    train: bool = True,
    seed: int = 0,
    epoch: int = 0,
    random_caption: bool = True,
) -> dict[str, Any]:
    """Build a batch from samples and ``Skipped`` markers (see the module docstring)."""
    skipped: Counter[str] = Counter()
    positions = []
    kept: list[dict[str, Any]] = []
    for item in samples:
        position = item.position if isinstance(item, Skipped) else item.get("position")
        if position is not None:
            positions.append(position)
        if isinstance(item, Skipped):
            skipped[item.reason] += 1
        else:
            kept.append(item)

    pixels, captions = [], []
    for i, sample in enumerate(kept):
        rng = sample_rng(seed, epoch, str(sample.get("key", i)))
        if train:
            options = sample.get("captions") if random_caption else None
            captions.append(rng.choice(options) if options else sample["caption"])
            pixels.append(train_transform(sample["image"], image_size, rng))
        else:
            captions.append(sample["caption"])
            pixels.append(eval_transform(sample["image"], image_size))
    batch: dict[str, Any] = {
        "pixel_values": torch.stack(pixels)
        if pixels
        else torch.empty(0, 3, image_size, image_size),
        "captions": captions,
        "keys": [str(s.get("key", i)) for i, s in enumerate(kept)],
        "skipped": dict(skipped),
        "positions": positions,
    }
    if not train and kept:
        _add_eval_fields(batch, kept, image_size)
    return batch


def _add_eval_fields(batch: dict[str, Any], kept: list[dict[str, Any]], size: int) -> None:
    if all("captions" in s for s in kept):
        batch["caption_sets"] = [list(s["captions"]) for s in kept]
    if all("image_id" in s for s in kept):
        batch["image_ids"] = [int(s["image_id"]) for s in kept]
    if all("masks" in s for s in kept):
        names = set.intersection(*(set(s["masks"]) for s in kept))
        batch["masks"] = {
            name: torch.stack([_eval_mask(s["masks"][name], size) for s in kept])
            for name in sorted(names)
        }


class Collate:
    """``collate`` with fixed settings, as a picklable ``collate_fn`` for a DataLoader.

    Call ``set_epoch`` before creating each epoch's DataLoader iterator (workers get a copy of
    this object when the iterator is created; see ``training.data.shards`` on persistence).
    """

    def __init__(
        self, image_size: int = 224, train: bool = True, seed: int = 0, random_caption: bool = True
    ) -> None:
        self.image_size, self.train, self.seed = image_size, train, seed
        self.random_caption = random_caption
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, samples: Sequence[dict[str, Any] | Skipped]) -> dict[str, Any]:
        return collate(
            samples,
            image_size=self.image_size,
            train=self.train,
            seed=self.seed,
            epoch=self.epoch,
            random_caption=self.random_caption,
        )
