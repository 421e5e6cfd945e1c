"""One string names a data source: ``build_dataset`` turns it into the right dataset.

Spec forms (the training config and the CLI take the same strings):
- ``shapes:N`` - N synthetic shapes samples (``training.data.shapes``); the split is mixed into
  their seed, so ``shapes:N`` for "train" and for "val" are different samples;
- a path ending in ``.csv``, ``.jsonl`` or ``.ndjson`` - a manifest (``model.data.manifest``,
  the same format ``lexvla index build`` reads); evaluation splits get one item per image with
  all its captions;
- anything else - webdataset shards: a folder of ``.tar`` files, a glob, or a brace pattern such
  as ``data/{00000..00099}.tar`` (``model.data.shards``); only the training split shuffles.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from model.data.manifest import is_manifest
from training.data.manifest import ManifestDataset
from training.data.shapes import ShapesDataset
from training.data.shards import ShardDataset

TRAIN_SPLIT = "train"


def build_dataset(
    spec: str,
    split: str = TRAIN_SPLIT,
    *,
    seed: int = 0,
    image_size: int = 224,
    image_root: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 1000,
) -> Dataset:
    """The dataset ``spec`` names, set up for ``split`` ("train" or an evaluation split).

    ``image_size`` only matters for synthetic shapes (they are drawn at that size); ``rank`` and
    ``world_size`` only for shards (map-style datasets are split by the DataLoader's sampler).
    """
    spec = spec.strip()
    train = split == TRAIN_SPLIT
    if spec.startswith("shapes:"):
        count = spec.removeprefix("shapes:")
        if not count.isdigit():
            raise ValueError(f"{spec!r}: expected shapes:N with N a whole number of samples")
        return ShapesDataset(int(count), seed=seed, image_size=image_size, split=split)
    if is_manifest(spec):
        return ManifestDataset(spec, image_root=image_root, group_by_image=not train)
    try:
        return ShardDataset(
            spec,
            seed=seed,
            shuffle=train,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
        )
    except ValueError as err:
        raise ValueError(
            f"cannot read data spec {spec!r} ({err}); expected shapes:N, a .csv/.jsonl manifest, "
            "or a folder, glob or brace pattern of .tar shards"
        ) from err
