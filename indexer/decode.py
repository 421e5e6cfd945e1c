"""Robust image decoding: any file Pillow can open becomes an RGB image, anything else a reason.

Web-scale image folders hold every oddity: CMYK JPEGs, 16-bit and palette PNGs with transparency,
animations, EXIF-rotated phone photos, empty and truncated files, HTML saved as ``.jpg``, and
decompression bombs. The image encoder takes RGB only (``model.preprocessing.check_rgb``), so the
conversions live here, and every file that cannot be used becomes a :class:`Skipped` record with a
human reason: the iterator never raises for one bad file and never drops one silently.

Conversions (:func:`to_rgb`): alpha (RGBA, LA, PA, palette with transparency) is flattened on
white, as a browser shows it on a white page; 16-bit and 32-bit greyscale are scaled to 8 bits by
their value range; an animation keeps its first frame; EXIF orientation is applied first.
``draft_size`` lets JPEG decode at a reduced scale (DCT scaling) that keeps both sides at least
that size, which makes large photos several times cheaper to decode for a 224-pixel encoder.
Truncated files are skipped as long as nobody sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``
(we never do: a half-grey image would be indexed as if it were real).
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps

from indexer.sources import SourceItem
from model.preprocessing import to_rgb

# Pillow's own default limit (about 89.5M pixels, 2x that raises); ours is explicit and per call.
DEFAULT_MAX_PIXELS = 100_000_000
THUMBNAIL_SIZE = 256
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# Image.MAX_IMAGE_PIXELS is a process-wide setting read while a header is parsed: set it under a
# lock so concurrent decoders with different limits cannot see each other's value.
_PIXEL_LIMIT_LOCK = threading.Lock()


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


@dataclass(frozen=True)
class Decoded:
    info: ImageInfo
    image: Image.Image  # RGB


@dataclass(frozen=True)
class Skipped:
    """A file that could not be used, and why (kept in the store's table of skipped files)."""

    id: str
    path: str
    reason: str


class DecodeError(ValueError):
    """Raised by :func:`decode_bytes`; its message is the reason a file is skipped."""


def decode_bytes(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> tuple[Image.Image, str, int, int]:
    """Bytes -> (RGB image, format, width, height); DecodeError with a human reason otherwise.

    Width and height are the full-resolution size after EXIF orientation, even when
    ``draft_size`` made the decoded image smaller.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _PIXEL_LIMIT_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = max_pixels
                try:
                    image = Image.open(io.BytesIO(data))
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"too many pixels (limit {max_pixels:,}): {exc}") from None
    except Image.UnidentifiedImageError:
        head = data[:16].lstrip().lower()
        hint = " (looks like text or HTML)" if head[:1] in (b"<", b"{") or head.isascii() else ""
        raise DecodeError(f"not an image Pillow can identify{hint}") from None
    except Exception as exc:  # untrusted input: any parser failure is a reason, not a crash
        if "truncated" in str(exc).lower():
            raise DecodeError(f"truncated image data (in the header): {exc}") from None
        raise DecodeError(f"cannot read the image header: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            f"too many pixels: {width}x{height} = {width * height:,} exceeds the limit of "
            f"{max_pixels:,} (max_pixels)"
        )
    fmt = image.format or "unknown"
    try:
        if image.getexif().get(_ORIENTATION_TAG) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        if draft_size is not None and fmt == "JPEG":
            image.draft(image.mode if image.mode == "CMYK" else "RGB", (draft_size, draft_size))
        image.seek(0)  # first frame of an animation
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(upright)
        rgb.load()
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise DecodeError(f"truncated image data: {exc}") from None
        raise DecodeError(f"corrupt {fmt} data: {exc}") from None
    except Exception as exc:  # untrusted input, see above
        raise DecodeError(f"cannot decode {fmt}: {type(exc).__name__}: {exc}") from None
    return rgb, fmt, width, height


def decode_item(
    item: SourceItem, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Decoded | Skipped:
    """One source item -> Decoded (RGB image + info) or Skipped (with the reason)."""
    if item.error is not None:
        return Skipped(item.id, item.path, item.error)
    try:
        data = item.read_bytes()
    except OSError as exc:
        return Skipped(item.id, item.path, f"cannot read file: {exc.strerror or exc}")
    try:
        image, fmt, width, height = decode_bytes(data, max_pixels, draft_size)
    except DecodeError as exc:
        return Skipped(item.id, item.path, str(exc))
    info = ImageInfo(
        id=item.id,
        path=item.path,
        bytes=len(data),
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        extra=dict(item.extra),
    )
    return Decoded(info, image)


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
