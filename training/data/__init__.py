"""Training data: synthetic shapes, manifests and webdataset shards, robustly decoded and batched.

Typical use in a training loop::

    dataset = build_dataset(cfg.train_data, "train", seed=cfg.seed, rank=rank, world_size=ws)
    collate_fn = Collate(image_size=224, train=True, seed=cfg.seed)
    skips, position = SkipCounter(), StreamPosition()
    for batch in DataLoader(dataset, batch_size=..., num_workers=..., collate_fn=collate_fn):
        skips.update(batch["skipped"])       # exact across workers: counts ride in batches
        position.update(batch["positions"])  # store position.state_dict() in the checkpoint
        if len(batch["captions"]) == 0:
            continue
        ...

Modules: ``shapes`` / ``shape_language`` (synthetic set and its caption grammar), ``manifest``
(CSV/JSONL datasets), ``shards`` / ``shard_writer`` / ``position`` (webdataset streaming,
writing, resuming), ``collate`` (transforms and batching) and ``build`` (data source from a spec
string). The formats themselves, decoding and skip accounting (``Skipped``, ``SkipCounter``) are
``model.data``, shared with the indexer.
"""

from training.data.build import build_dataset
from training.data.collate import Collate, collate, sample_rng
from training.data.manifest import ManifestDataset
from training.data.position import StreamIndex, StreamPosition
from training.data.shape_language import COLOURS, SHAPE_KINDS, SIZES, WORDS, Shape
from training.data.shapes import COLOUR_RGB, MASK_CLASSES, ShapesDataset, render_sample
from training.data.shard_writer import write_shards
from training.data.shards import ShardDataset

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "MASK_CLASSES",
    "SHAPE_KINDS",
    "SIZES",
    "WORDS",
    "Collate",
    "ManifestDataset",
    "Shape",
    "ShapesDataset",
    "ShardDataset",
    "StreamIndex",
    "StreamPosition",
    "build_dataset",
    "collate",
    "render_sample",
    "sample_rng",
    "write_shards",
]
