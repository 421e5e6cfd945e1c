"""Streaming webdataset shards as img2dataset writes them: ``.tar`` files of grouped members.

A sample is the group of consecutive tar members that share a key (the member name up to the
first dot of its base name): ``<key>.jpg`` (or ``jpeg``/``png``/``webp``), ``<key>.txt`` (the
caption) and optionally ``<key>.json`` (metadata, returned as ``meta``). Items are
``{"image", "caption", "key", "meta", "shard", "position"}`` or a
:class:`~training.data.skips.Skipped` marker with the same ``position``.

Reading uses ``tarfile`` directly rather than the ``webdataset`` package: the pipeline needs
exact control over order (for resuming) and over errors (for skipping), and the format is just
a tar. An epoch runs like this:

1. the shard list (sorted) is shuffled with ``(seed, epoch)``;
2. slot ``s`` of ``num_slots = world_size x num_workers`` (slot = rank x num_workers + worker)
   takes shards ``s, s + num_slots, ...``: every shard, hence every sample, belongs to exactly
   one slot per epoch. Ranks can therefore get different sample counts; a DDP loop should run a
   fixed number of steps per epoch (``count_samples`` / global batch) or stop all ranks together;
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
import glob
import json
import logging
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from training.data.decode import clean_caption, decode_image
from training.data.position import StreamIndex, StreamPosition
from training.data.skips import Skipped, log_skip

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
T = TypeVar("T")


def expand_braces(pattern: str) -> list[str]:
    """Expand numeric ranges as webdataset does: ``data-{000..002}.tar`` -> three names."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        name
        for i in range(int(first), int(last) + 1)
        for name in expand_braces(f"{head}{i:0{width}d}{tail}")
    ]


def resolve_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths, sorted, from a folder of ``.tar`` files, a glob, a brace range or a list.

    Brace ranges may name shards that do not exist (img2dataset leaves failed shards out); those
    are counted as ``unreadable_shard`` when read, so a pattern works for a partial download.
    """
    if not isinstance(spec, str | Path):
        paths = [Path(p) for p in spec]
    elif Path(spec).is_dir():
        paths = list(Path(spec).glob("*.tar"))
    elif any(c in str(spec) for c in "*?["):
        paths = [Path(p) for p in glob.glob(str(spec))]
    else:
        paths = [Path(p) for p in expand_braces(str(spec))]
    if not paths:
        raise ValueError(f"no .tar shards found for {spec!r}")
    return sorted(set(paths), key=str)


class _Record(NamedTuple):
    """A sample's reference in a shard: where each member's data lies (offset, size)."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]]


def _split_name(name: str) -> tuple[str, str] | None:
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:  # hidden files (e.g. macOS "._x") are no samples
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _shard_records(path: Path) -> Iterator[_Record | Skipped]:
    """The shard's records in tar order, from headers only; a broken tar ends with a Skipped.

    A truncated shard either fails inside ``tarfile`` or, when it was cut between members,
    ends without the two zero blocks that close every tar: both become one
    ``unreadable_shard`` marker, and the sample being grouped at the break (possibly missing
    members or data) is dropped with it.
    """
    key: str | None = None
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                split = _split_name(info.name) if info.isfile() else None
                if split is None:
                    continue
                if split[0] != key:
                    if key is not None and members:
                        yield _Record(path, key, members)
                    key, members = split[0], {}
                members[split[1]] = (info.offset_data, info.size)
            if path.stat().st_size - tar.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker: the shard is truncated")
    except (OSError, tarfile.TarError) as err:
        yield log_skip(Skipped("unreadable_shard", str(path), f"{type(err).__name__}: {err}"))
        return
    if key is not None and members:
        yield _Record(path, key, members)


def count_samples(shards: Sequence[Path]) -> int:
    """Records in ``shards`` (tar headers only), e.g. to fix the number of steps of an epoch."""
    return sum(1 for p in shards for r in _shard_records(p) if isinstance(r, _Record))


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


def _read_members(record: _Record, exts: Sequence[str]) -> dict[str, bytes] | Skipped:
    source = f"{record.shard}:{record.key}"
    data = {}
    try:
        with record.shard.open("rb") as f:
            for ext in exts:
                offset, size = record.members[ext]
                f.seek(offset)
                data[ext] = f.read(size)
                if len(data[ext]) < size:
                    return log_skip(Skipped("truncated_record", source, f"{ext}: end of file"))
    except OSError as err:
        return log_skip(Skipped("unreadable_shard", source, f"{type(err).__name__}: {err}"))
    return data


def load_record(record: _Record, position: StreamIndex | None = None) -> dict[str, Any] | Skipped:
    """Read and decode one record into a sample, or a ``Skipped`` saying why not."""
    source = f"{record.shard}:{record.key}"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in record.members), None)
    if image_ext is None:
        return dataclasses.replace(log_skip(Skipped("missing_image", source)), position=position)
    if CAPTION_EXTENSION not in record.members:
        skipped = log_skip(Skipped("missing_caption", source))
        return dataclasses.replace(skipped, position=position)
    exts = [image_ext, CAPTION_EXTENSION] + (["json"] if "json" in record.members else [])
    data = _read_members(record, exts)
    if isinstance(data, Skipped):
        return dataclasses.replace(data, position=position)
    caption = clean_caption(data[CAPTION_EXTENSION], source)
    image = decode_image(data[image_ext], source) if isinstance(caption, str) else caption
    if isinstance(image, Skipped):
        return dataclasses.replace(image, position=position)
    meta: Any = {}
    if "json" in data:
        try:
            meta = json.loads(data["json"])
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
        stream: Iterator[_Record | Skipped] = chain.from_iterable(
            _shard_records(p) for p in order[slot::num_slots]
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
