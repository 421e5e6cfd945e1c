"""The reader stage of an indexing job: decode, crop and thumbnail in DataLoader worker processes.

An H100-class GPU encodes ~3,000 images/s at 224 px, far more than one Python process can decode
(a 500 px JPEG takes ~3-5 ms to decode, crop and thumbnail). So decoding runs in
``torch.utils.data.DataLoader`` worker processes (``decode_workers``; 0 decodes in the job's own
process), each turning a whole batch of :class:`~model.data.SourceItem` into:

- the encoder's centre crop as **uint8** (``model.preprocessing.eval_uint8``): a quarter of the
  bytes of normalised floats through shared memory, the pinned buffer and the PCIe link; the
  encoder normalises on the GPU (``ImageEncoder.patch_features``), with the CPU's arithmetic;
- what the store records (:class:`~indexer.decode.ImageInfo`, content hash included) and the
  JPEG thumbnail;
- or a :class:`~model.data.Skipped` with its reason.

JPEG draft mode (DCT-domain downscaling in libjpeg) decodes large photos at the smallest scale
that still covers the crop and the thumbnail. On CUDA the batch's pixels are copied into pinned
memory by the DataLoader, so the runner's host-to-device copy is asynchronous.

The runner (``indexer.runner``) plans the batches: its batch sampler yields lists of
``(ChunkTag, SourceItem)`` tasks in source order, one list per batch, so a single DataLoader (and
one set of workers) serves the whole job, and every batch says which store chunk it belongs to
and whether it is that chunk's last. A chunk with nothing to encode still yields one task with
no item, so that its done marker is committed in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from indexer.decode import Decoded, ImageInfo, decode_item, thumbnail_jpeg
from model.data import Skipped, SourceItem
from model.preprocessing import eval_uint8


@dataclass(frozen=True)
class ChunkTag:
    """The store chunk a batch belongs to: its number, done key, and whether it is the last batch."""

    number: int
    key: str
    last: bool


Task = tuple[ChunkTag, SourceItem | None]


@dataclass
class Prepared:
    info: ImageInfo
    pixels: torch.Tensor  # uint8 (3, S, S)
    thumbnail: bytes | None


@dataclass
class LoadedBatch:
    """A batch as the encoder gets it; ``pixels`` is (n, 3, S, S) uint8, pinned on CUDA."""

    tag: ChunkTag
    pixels: torch.Tensor
    infos: list[ImageInfo] = field(default_factory=list)
    thumbnails: list[bytes | None] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.infos)

    def pin_memory(self) -> LoadedBatch:  # called by the DataLoader's pinning thread
        self.pixels = self.pixels.pin_memory()
        return self

    def select(self, keep: list[bool]) -> LoadedBatch:
        """Only the rows where ``keep`` is true (the skipped list stays whole)."""
        rows = [i for i, k in enumerate(keep) if k]
        return LoadedBatch(
            self.tag,
            self.pixels[rows],
            [self.infos[i] for i in rows],
            [self.thumbnails[i] for i in rows],
            self.skipped,
        )


class PrepareImages:
    """``dataset[task]``: decode one item in a worker (picklable: only settings, no state)."""

    def __init__(
        self,
        image_size: int,
        max_pixels: int,
        draft_size: int | None,
        thumbnail_size: int | None,
    ) -> None:
        self.image_size, self.max_pixels = image_size, max_pixels
        self.draft_size, self.thumbnail_size = draft_size, thumbnail_size

    def __getitem__(self, task: Task) -> tuple[ChunkTag, Prepared | Skipped | None]:
        tag, item = task
        if item is None:
            return tag, None
        decoded = decode_item(item, self.max_pixels, self.draft_size)
        if isinstance(decoded, Skipped):
            return tag, decoded
        return tag, self._prepare(decoded)

    def _prepare(self, decoded: Decoded) -> Prepared:
        thumb = None
        if self.thumbnail_size is not None:
            thumb = thumbnail_jpeg(decoded.image, self.thumbnail_size)
        return Prepared(decoded.info, eval_uint8(decoded.image, self.image_size), thumb)


def collate(results: list[tuple[ChunkTag, Prepared | Skipped | None]]) -> LoadedBatch:
    tag = results[0][0]
    prepared = [r for _, r in results if isinstance(r, Prepared)]
    empty = torch.zeros((0, 3, 1, 1), dtype=torch.uint8)  # never encoded
    pixels = torch.stack([p.pixels for p in prepared]) if prepared else empty
    return LoadedBatch(
        tag,
        pixels,
        [p.info for p in prepared],
        [p.thumbnail for p in prepared],
        [r for _, r in results if isinstance(r, Skipped)],
    )


def image_loader(
    plan: Iterable[list[Task]], prepare: PrepareImages, workers: int, pin_memory: bool
) -> DataLoader[Any]:
    """One DataLoader over the planned batches, in order; ``workers`` decoding processes."""
    options: dict[str, Any] = {
        "batch_sampler": plan,
        "collate_fn": collate,
        "num_workers": workers,
        "pin_memory": pin_memory,
    }
    if workers > 0:
        options["prefetch_factor"] = 2
    return DataLoader(prepare, **options)  # type: ignore[arg-type]
