"""Image bytes for the service: originals and thumbnails from the store, and uploaded queries.

An original is read from the path the corpus store recorded: a file, or ``<shard.tar>#<member>``
for a webdataset sample. When the original is gone (moved, or on another machine), explanations
fall back to the stored thumbnail and say so. Uploads are decoded by ``model.data.decode`` (the
same robust decoding as indexing: any Pillow format, EXIF orientation, alpha flattened, pixel
limit).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from indexer.store import CorpusStore
from model.data import DecodeError, decode_bytes
from service.core.errors import NotFound, PayloadTooLarge, UnsupportedMediaType

MEDIA_TYPES = {
    "JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
    "BMP": "image/bmp", "TIFF": "image/tiff", "MPO": "image/jpeg",
}  # fmt: skip


LOC = ("body", "file")


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str


def require_store(store: CorpusStore | None, what: str) -> CorpusStore:
    if store is None:
        raise NotFound(f"{what} needs a corpus store, and none is configured (LEXVLA_STORE)")
    return store


def missing_in_store(image_id: str) -> NotFound:
    """The 404 for an image the corpus store does not hold (or the key may not see)."""
    return NotFound(f"no image {image_id!r} in the corpus store", loc=["path", "image_id"])


def read_original(store: CorpusStore, image_id: str) -> StoredImage | None:
    """The original file's bytes, None if it cannot be read any more; NotFound if unknown."""
    try:
        record = store.metadata(image_id)
    except KeyError:
        raise missing_in_store(image_id) from None
    media_type = MEDIA_TYPES.get(record.format.upper(), "application/octet-stream")
    try:
        data = _read_path(record.path)
    except (OSError, tarfile.TarError, KeyError):
        return None
    return None if data is None else StoredImage(data, media_type)


def _read_path(path: str) -> bytes | None:
    file = Path(path)
    if file.is_file():
        return file.read_bytes()
    shard, sep, member = path.rpartition("#")
    if sep and Path(shard).is_file():
        with tarfile.open(shard) as tar:
            extracted = tar.extractfile(member)
            return None if extracted is None else extracted.read()
    return None


def read_thumbnail(store: CorpusStore, image_id: str) -> bytes:
    try:
        data = store.thumbnail(image_id)
    except KeyError:
        raise missing_in_store(image_id) from None
    if data is None:
        raise NotFound(f"image {image_id!r} has no thumbnail", loc=["path", "image_id"])
    return data


def load_rgb(
    store: CorpusStore, image_id: str, max_pixels: int, draft_size: int | None = None
) -> tuple[Image.Image, Literal["original", "thumbnail"]]:
    """(RGB image, "original" | "thumbnail") of a stored image; NotFound if neither is usable."""
    original = read_original(store, image_id)
    if original is not None:
        try:
            return decode_bytes(original.data, max_pixels, draft_size).image, "original"
        except DecodeError:
            pass
    thumb = read_thumbnail(store, image_id)
    try:
        return decode_bytes(thumb, max_pixels).image, "thumbnail"
    except DecodeError as exc:
        raise NotFound(
            f"image {image_id!r}: neither the original nor its thumbnail decode: {exc}"
        ) from None


def decode_upload(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """An uploaded query image -> RGB; 415 (or 413 for too many pixels) with the reason otherwise."""
    try:
        return decode_bytes(data, max_pixels, draft_size).image
    except DecodeError as exc:
        reason = str(exc)
        if exc.reason == "image_too_large":
            raise PayloadTooLarge(f"the uploaded image is too large: {reason}", loc=LOC) from None
        raise UnsupportedMediaType(
            f"the uploaded file is not a usable image: {reason}", loc=LOC
        ) from None
