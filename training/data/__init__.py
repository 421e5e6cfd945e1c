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
(CSV/JSONL), ``shards`` / ``shard_writer`` / ``position`` (webdataset streaming, writing,
resuming), ``decode`` / ``skips`` (RGB conversion and skipped-sample accounting), ``collate``
(transforms and batching) and ``build`` (data source from a spec string).
"""

from training.data.build import build_dataset
from training.data.collate import Collate, collate, sample_rng
from training.data.decode import clean_caption, decode_image, load_image, to_rgb
from training.data.manifest import ManifestDataset, ManifestRow, read_manifest
from training.data.position import StreamIndex, StreamPosition
from training.data.shape_language import COLOURS, SHAPE_KINDS, SIZES, WORDS, Shape
from training.data.shapes import COLOUR_RGB, MASK_CLASSES, ShapesDataset, render_sample
from training.data.shard_writer import write_shards
from training.data.shards import ShardDataset, count_samples, resolve_shards
from training.data.skips import SKIP_REASONS, SkipCounter, Skipped

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "MASK_CLASSES",
    "SHAPE_KINDS",
    "SIZES",
    "SKIP_REASONS",
    "WORDS",
    "Collate",
    "ManifestDataset",
    "ManifestRow",
    "Shape",
    "ShapesDataset",
    "ShardDataset",
    "SkipCounter",
    "Skipped",
    "StreamIndex",
    "StreamPosition",
    "build_dataset",
    "clean_caption",
    "collate",
    "count_samples",
    "decode_image",
    "load_image",
    "read_manifest",
    "render_sample",
    "resolve_shards",
    "sample_rng",
    "to_rgb",
    "write_shards",
]
