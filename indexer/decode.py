"""Decode source items for indexing: RGB image + what the store keeps, or a skip with its reason.

Decoding itself (every Pillow mode to RGB, EXIF orientation, pixel limits, JPEG draft mode, one
reason code per failure) is ``model.data.decode``, shared with training. This module adds what
the corpus store records about an image (:class:`ImageInfo`: size, format, content hash, source
metadata) and the thumbnails it serves. An image's metadata record (:mod:`indexer.metadata`) is
its file's and EXIF's fields, overridden by the typed source fields the runner put on the item.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from indexer.metadata_job import exif_fields, file_fields
from model.data import DEFAULT_MAX_PIXELS, DecodeError, Skipped, SourceItem, decode_bytes
from model.preprocessing import to_rgb

THUMBNAIL_SIZE = 256

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "THUMBNAIL_SIZE",
    "Decoded",
    "ImageInfo",
    "decode_item",
    "iter_decoded",
    "thumbnail_jpeg",
]


@dataclass(frozen=True)
class ImageInfo:
    """What the store keeps about one image (width/height after EXIF orientation, full size)."""

    id: str
    path: str
    bytes: int
    format: str
    width: int
    height: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # typed fields (indexer.metadata)


@dataclass(frozen=True)
class Decoded:
    info: ImageInfo
    image: Image.Image  # RGB


def decode_item(
    item: SourceItem, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Decoded | Skipped:
    """One source item -> Decoded (RGB image + info) or Skipped (with the reason code)."""
    if item.error is not None:
        return item.error
    try:
        data = item.read_bytes()
        decoded = decode_bytes(data, max_pixels, draft_size)
    except DecodeError as err:
        return err.skipped(item.path, item.id)
    info = ImageInfo(
        id=item.id,
        path=item.path,
        bytes=len(data),
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        sha256=hashlib.sha256(data).hexdigest(),
        extra=dict(item.extra),
        metadata={**_file_and_exif(item, data), **item.metadata},
    )
    return Decoded(info, decoded.image)


def _file_and_exif(item: SourceItem, data: bytes) -> dict[str, Any]:
    on_disk = item.data is None and item.record is None
    return {**file_fields(item.path, data, on_disk), **exif_fields(data)}


def iter_decoded(
    items: Iterable[SourceItem], max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Iterator[Decoded | Skipped]:
    """Decode items in order; every item yields exactly one Decoded or Skipped."""
    for item in items:
        yield decode_item(item, max_pixels, draft_size)


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE, quality: int = 85) -> bytes:
    """JPEG bytes of ``image`` shrunk to at most ``size`` pixels on its longest side."""
    thumb = to_rgb(image).copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
