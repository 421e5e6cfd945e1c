"""Streaming webdataset shards for training: shuffled, split by rank and worker, resumable.

The shard format (sample keys, hidden members, the header-only record index, brace patterns)
is ``model.data.shards``, shared with the indexer. A training sample needs ``<key>.jpg`` (or
``jpeg``/``png``/``webp``) and ``<key>.txt`` (the caption); ``<key>.json`` is returned as
``meta``. Items are ``{"image", "caption", "key", "meta", "shard", "position"}`` or a
:class:`~model.data.Skipped` marker with the same ``position``. An epoch runs like this:

1. the shard list (sorted) is shuffled with ``(seed, epoch)``;
2. slot ``s`` of ``num_slots = world_size x num_workers`` (slot = rank x num_workers + worker)
   takes shards ``s, s + num_slots, ...``: every shard, hence every sample, belongs to exactly
   one slot per epoch. Ranks can therefore get different sample counts; a DDP loop should run a
   fixed number of steps per epoch (``model.data.shards.count_samples`` / global batch) or
   stop all ranks together;
3. the slot indexes its shards lazily (tar headers only) and passes *references* to records
   through a shuffle buffer seeded with ``(seed, epoch, slot, num_slots)``; a record's data is
   read and decoded only when it leaves the buffer;
4. each emitted item gets the next offset in the slot (``training.data.position``), which is
   what makes resuming exact and cheap: see :meth:`ShardDataset.resume`.

``set_epoch`` and ``resume`` change the dataset object; DataLoader workers receive a copy when
an iterator is created, so create the iterator after calling them and do not use
``persistent_workers=True`` (a persistent worker would keep its old epoch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from model.data import DecodeError, Skipped, clean_caption, decode_image, log_skip
from model.data.shards import (
    CAPTION_EXTENSION,
    METADATA_EXTENSION,
    ShardRecord,
    read_members,
    resolve_shards,
    shard_records,
)
from training.data.position import StreamIndex, StreamPosition

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _buffered_shuffle(items: Iterator[T], size: int, rng: random.Random) -> Iterator[T]:
    """Reservoir-style shuffle: fill ``size`` items, then emit a random one per item read."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def load_record(
    record: ShardRecord, position: StreamIndex | None = None
) -> dict[str, Any] | Skipped:
    """Read and decode one record into a sample, or a ``Skipped`` saying why not."""
    source = record.source
    image_ext = record.image_extension
    if image_ext is None:
        return dataclasses.replace(log_skip(Skipped("missing_image", source)), position=position)
    if CAPTION_EXTENSION not in record.members:
        skipped = log_skip(Skipped("missing_caption", source))
        return dataclasses.replace(skipped, position=position)
    exts = [image_ext, CAPTION_EXTENSION]
    exts += [METADATA_EXTENSION] if METADATA_EXTENSION in record.members else []
    try:
        data = read_members(record, exts)
    except DecodeError as err:
        return dataclasses.replace(log_skip(err.skipped(source)), position=position)
    caption = clean_caption(data[CAPTION_EXTENSION], source)
    image = decode_image(data[image_ext], source) if isinstance(caption, str) else caption
    if isinstance(image, Skipped):
        return dataclasses.replace(image, position=position)
    meta: Any = {}
    if METADATA_EXTENSION in data:
        try:
            meta = json.loads(data[METADATA_EXTENSION])
        except ValueError:  # metadata is optional: a damaged one is no reason to lose the sample
            logger.debug("ignoring unreadable metadata of %s", source)
    return {
        "image": image,
        "caption": caption,
        "key": record.key,
        "meta": meta,
        "shard": str(record.shard),
        "position": position,
    }


class ShardDataset(IterableDataset):
    """A streamed, shuffled, rank- and worker-split epoch over tar shards (module docstring)."""

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.shards = resolve_shards(shards)
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: StreamPosition | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (clears a pending resume)."""
        self.epoch, self._resume = epoch, None

    def resume(self, position: StreamPosition) -> None:
        """Continue ``position.epoch`` after the items ``position`` says were consumed.

        Exact: each slot replays its fixed item sequence and drops the first
        ``position.consumed[slot]`` items without reading their data (tar headers only).
        Requires the same shards, seed and number of slots as the run that recorded it.
        """
        # A copy: the loop goes on updating its own position object while this one is read.
        self.epoch = position.epoch
        self._resume = StreamPosition.from_state_dict(position.state_dict())

    def __iter__(self) -> Iterator[dict[str, Any] | Skipped]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.iter_slot(self.rank * workers + worker, self.world_size * workers)

    def iter_slot(self, slot: int, num_slots: int) -> Iterator[dict[str, Any] | Skipped]:
        """The items of one slot in this epoch (``__iter__`` picks the slot of this process)."""
        if not 0 <= slot < num_slots:
            raise ValueError(f"slot {slot} out of range for {num_slots} slots")
        start = self._start(slot, num_slots)
        if len(self.shards) < num_slots and slot == 0:
            logger.warning(
                "%d shards for %d slots (ranks x workers): some workers will get no data",
                len(self.shards),
                num_slots,
            )
        epoch = self.epoch
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        stream: Iterator[ShardRecord | Skipped] = chain.from_iterable(
            shard_records(p) for p in order[slot::num_slots]
        )
        if self.shuffle:
            rng = random.Random(f"buffer:{self.seed}:{epoch}:{slot}:{num_slots}")
            stream = _buffered_shuffle(stream, self.shuffle_buffer, rng)
        # Every item gets an offset, including the marker of a broken shard, so that a resumed
        # run neither repeats nor loses anything that the interrupted run's loop consumed.
        for offset, item in enumerate(stream):
            if offset < start:
                continue  # consumed before the interruption: its data is never read
            position = StreamIndex(epoch, slot, num_slots, offset)
            if isinstance(item, Skipped):
                yield dataclasses.replace(item, position=position)
            else:
                yield load_record(item, position)

    def _start(self, slot: int, num_slots: int) -> int:
        resume = self._resume
        if resume is None or resume.num_slots is None:
            return 0
        if resume.num_slots != num_slots:
            raise ValueError(
                f"cannot resume: the position was recorded with {resume.num_slots} slots (world "
                f"size x DataLoader workers) but this run has {num_slots}; resume with the same "
                "world size and number of workers"
            )
        return resume.consumed.get(slot, 0)
