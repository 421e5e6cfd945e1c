"""The training data stream: endless full batches per rank, with an exactly resumable position.

Each rank reads its own endless sequence of epochs. DataLoader workers prepare *single* samples
(decode, transform, pick a caption); the main process packs them into local batches of exactly
``batch_size / world_size`` usable samples, dropping ``Skipped`` markers and counting them. So
every step has the configured global batch on every rank (the loss's all-gather needs equal
shapes), a corrupt sample never stops a run, and the position is known to the sample:

- map-style datasets (synthetic shapes, manifests): the epoch's order is a permutation seeded by
  ``(seed, epoch)``; rank ``r`` of ``W`` takes positions ``r, r + W, ...``; the position is
  ``(epoch, items consumed)`` and a resumed stream starts the sampler there;
- webdataset shards: ``training.data.position.StreamPosition`` of this rank's slots, which
  ``ShardDataset.resume`` continues exactly (see ``training.data.shards``).

Items that were prefetched by workers but not packed into a batch are not counted as consumed,
so a resumed run sees exactly the samples the interrupted one had not trained on, with the same
augmentation (each sample's random generator is seeded by ``(seed, epoch, key)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from model.data import Skipped
from model.preprocessing import eval_transform, train_transform
from training.data import ShardDataset, StreamPosition, sample_rng


class PrepareSample:
    """A dataset item -> ``{"pixels", "caption"}`` or ``{"skipped"}``, plus its ``position``.

    Runs in DataLoader workers (picklable). Training picks one of a sample's ``captions`` at
    random when it has several; ``augment`` chooses ``train_transform`` (random resized crop and
    flip) over ``eval_transform`` (resize and centre crop).
    """

    def __init__(self, image_size: int, augment: bool, seed: int) -> None:
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.epoch = 0

    def __call__(self, item: dict[str, Any] | Skipped) -> dict[str, Any]:
        if isinstance(item, Skipped):
            return {"skipped": item.reason, "position": item.position}
        rng = sample_rng(self.seed, self.epoch, str(item.get("key", "")))
        options = item.get("captions")
        caption = rng.choice(options) if options else item["caption"]
        if self.augment:
            pixels = train_transform(item["image"], self.image_size, rng)
        else:
            pixels = eval_transform(item["image"], self.image_size)
        return {"pixels": pixels, "caption": caption, "position": item.get("position")}


class TrainStream:
    """Endless local batches ``{"pixel_values", "captions", "skipped"}`` for one rank."""

    def __init__(
        self,
        dataset: Dataset,
        local_batch: int,
        *,
        image_size: int,
        augment: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if local_batch < 1:
            raise ValueError(f"local batch size must be >= 1, got {local_batch}")
        self.dataset, self.local_batch = dataset, local_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # CUDA: page-locked batches, so the copy to the GPU is async
        self.prepare = PrepareSample(image_size, augment, seed)
        self.streaming = isinstance(dataset, IterableDataset)
        self.epoch, self.consumed = 0, 0  # map-style position
        self.stream_position = StreamPosition()  # shard position
        self._items: Iterator[dict[str, Any]] | None = None
        self._usable_in_epoch, self._empty_epochs = 0, 0

    # --- position -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.streaming:
            return {"kind": "shards", "position": self.stream_position.state_dict()}
        return {"kind": "map", "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = "shards" if self.streaming else "map"
        if state.get("kind") != kind:
            raise ValueError(f"cannot resume a {state.get('kind')} data position on {kind} data")
        if self.streaming:
            self.stream_position = StreamPosition.from_state_dict(state["position"])
            self.epoch = self.stream_position.epoch
        else:
            self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._items = None

    # --- iteration ----------------------------------------------------------------------------
    def _epoch_order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        return order[self.rank :: self.world_size]

    def _loader(self) -> DataLoader:
        self.prepare.epoch = self.epoch
        options: dict[str, Any] = {
            "batch_size": None,
            "collate_fn": self.prepare,
            "num_workers": self.num_workers,
            # Its own generator: creating an iterator must not draw from the global torch RNG,
            # or a resumed run's random state would differ from the uninterrupted run's.
            "generator": torch.Generator().manual_seed(self.seed + 7919 * self.epoch + self.rank),
        }
        if self.num_workers > 0:
            options["prefetch_factor"] = 8
        if self.streaming:
            assert isinstance(self.dataset, ShardDataset)
            if (
                self.stream_position.num_slots is not None
                and self.stream_position.epoch == self.epoch
            ):
                self.dataset.resume(self.stream_position)
            else:
                self.dataset.set_epoch(self.epoch)
            return DataLoader(self.dataset, **options)
        order = self._epoch_order()[self.consumed :]
        return DataLoader(self.dataset, sampler=order, **options)

    def _next_item(self) -> dict[str, Any]:
        while True:
            if self._items is None:
                self._items = iter(self._loader())
            item = next(self._items, None)
            if item is not None:
                return item
            # An epoch ended. Two in a row without a usable sample (so at least one whole
            # epoch read from its start) means the data cannot train anything.
            self._empty_epochs = 0 if self._usable_in_epoch else self._empty_epochs + 1
            if self._empty_epochs >= 2:
                raise RuntimeError(
                    f"rank {self.rank}: the training data gave no usable sample in a whole epoch "
                    "(empty, or every sample skipped); check the data spec and the skip counts"
                )
            self.epoch, self.consumed, self._usable_in_epoch = self.epoch + 1, 0, 0
            self._items = None

    def next_batch(self) -> dict[str, Any]:
        pixels: list[torch.Tensor] = []
        captions: list[str] = []
        skipped: Counter[str] = Counter()
        while len(captions) < self.local_batch:
            item = self._next_item()
            if self.streaming and item["position"] is not None:
                self.stream_position.update([item["position"]])
            else:
                self.consumed += 1
            if "skipped" in item:
                skipped[item["skipped"]] += 1
                continue
            self._usable_in_epoch += 1
            pixels.append(item["pixels"])
            captions.append(item["caption"])
        stacked = torch.stack(pixels)
        if self.pin_memory:
            stacked = stacked.pin_memory()
        return {"pixel_values": stacked, "captions": captions, "skipped": dict(skipped)}

    def close(self) -> None:
        """Stop the DataLoader workers of the current epoch."""
        self._items = None
