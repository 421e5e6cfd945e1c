"""Robust decoding: any image Pillow can open becomes an RGB image, anything else a reason.

Web-scale image collections hold every oddity: CMYK JPEGs, 16-bit and palette PNGs with
transparency, animations, EXIF-rotated phone photos, empty and truncated files, HTML saved as
``.jpg``, and decompression bombs. The image encoder takes RGB only
(``model.preprocessing.check_rgb``), so training, the indexer and the service decode with
:func:`decode_bytes`, and every input that cannot be used becomes a
:class:`~model.data.skips.Skipped` with a reason code: nothing raises for one bad file and
nothing is dropped silently.

Conversions (``model.preprocessing.to_rgb``): EXIF orientation is applied first; alpha is
flattened on white, as a browser shows it on a white page; 16-bit and float greyscale are scaled
to 8 bits by their value range; an animation keeps its first frame. ``draft_size`` lets JPEG
decode at a reduced scale (DCT scaling) that keeps both sides at least that size, which makes
large photos several times cheaper to decode for a 224-pixel encoder. Truncated files are
skipped as long as nobody sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` (we never do: a
half-grey image would be used as if it were real). Image decoders raise a wide range of exception
types on damaged data (``OSError``, ``SyntaxError``, ``ValueError``, ``struct.error``, ...), so
decoding catches ``Exception`` and reports the type in the skip's detail.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from model.data.skips import Skipped, log_skip
from model.preprocessing import to_rgb

# Pillow's own default limit is about 89.5M pixels (2x that raises); ours is explicit, per call.
DEFAULT_MAX_PIXELS = 100_000_000
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# Image.MAX_IMAGE_PIXELS is a process-wide setting read while a header is parsed: set it under a
# lock so concurrent decoders with different limits cannot see each other's value.
_PIXEL_LIMIT_LOCK = threading.Lock()


class DecodeError(ValueError):
    """Raised by :func:`decode_bytes`: ``reason`` is a skip code, the message says what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def skipped(self, source: str, id: str = "") -> Skipped:
        return Skipped(self.reason, source, self.detail, id)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright
    format: str
    width: int  # full-resolution size after EXIF orientation, even when drafted smaller
    height: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise DecodeError("empty_file", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _PIXEL_LIMIT_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = max_pixels
                try:
                    return Image.open(io.BytesIO(data))
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(
            "image_too_large", f"too many pixels (limit {max_pixels:,}): {exc}"
        ) from None
    except Image.UnidentifiedImageError:
        head = data[:16].lstrip().lower()
        hint = " (looks like text or HTML)" if head[:1] in (b"<", b"{") or head.isascii() else ""
        raise DecodeError(
            "not_an_image", f"not an image Pillow can identify{hint}, {len(data)} bytes"
        ) from None
    except Exception as exc:  # untrusted input: any parser failure is a reason, not a crash
        what = (
            "truncated image data (in the header)"
            if "truncated" in str(exc).lower()
            else ("cannot read the image header")
        )
        raise DecodeError("corrupt_image", f"{what}: {type(exc).__name__}: {exc}") from None


def decode_bytes(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> DecodedImage:
    """Bytes -> an upright RGB image with its format and full size; DecodeError otherwise."""
    image = _open(data, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            "image_too_large",
            f"too many pixels: {width}x{height} = {width * height:,} exceeds the limit of "
            f"{max_pixels:,} (max_pixels)",
        )
    fmt = image.format or "unknown"
    try:
        if image.getexif().get(_ORIENTATION_TAG) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        if draft_size is not None and fmt == "JPEG":
            image.draft(image.mode if image.mode == "CMYK" else "RGB", (draft_size, draft_size))
        image.seek(0)  # first frame of an animation
        image.load()
        rgb = to_rgb(ImageOps.exif_transpose(image) or image)
        rgb.load()
    except Exception as exc:  # untrusted input, see the module docstring
        kind = "truncated image data" if "truncated" in str(exc).lower() else f"corrupt {fmt} data"
        raise DecodeError("corrupt_image", f"{kind}: {type(exc).__name__}: {exc}") from None
    return DecodedImage(rgb, fmt, width, height)


def decode_image(
    data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image | Skipped:
    """Image bytes -> RGB image, or a logged ``Skipped`` saying why not."""
    try:
        return decode_bytes(data, max_pixels).image
    except DecodeError as err:
        return log_skip(err.skipped(source))


def read_file(path: str | Path) -> bytes:
    """A file's bytes; DecodeError ``missing_file`` / ``unreadable_file`` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DecodeError("missing_file", "no such file") from None
    except OSError as err:
        raise DecodeError(
            "unreadable_file", f"{type(err).__name__}: {err.strerror or err}"
        ) from None


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image | Skipped:
    """Read and decode an image file; a missing or unreadable file becomes a ``Skipped``."""
    try:
        return decode_bytes(read_file(path), max_pixels).image
    except DecodeError as err:
        return log_skip(err.skipped(str(path)))


def clean_caption(text: str | bytes | None, source: str) -> str | Skipped:
    """Collapse whitespace; empty, missing or non-UTF-8 captions become a ``Skipped``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            return log_skip(Skipped("bad_caption", source, str(err)))
    caption = " ".join((text or "").split())
    if not caption:
        return log_skip(Skipped("empty_caption", source))
    return caption
