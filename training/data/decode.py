"""Turning stored bytes into what the model takes: an RGB PIL image and a clean caption.

``model.preprocessing`` accepts RGB images only and refuses anything else, so the conversion
happens here, once, for every data source: EXIF orientation is applied (phones store portraits
as rotated landscapes plus a tag), alpha is flattened on white (transparent logo backgrounds are
usually meant as white, and black would invent dark borders), 16-bit and float greyscale are
scaled to 8 bits instead of being clipped, and palette/CMYK/greyscale go through Pillow.

Failures never raise: they come back as :class:`~training.data.skips.Skipped` with a reason.
Image decoders raise a wide range of exception types on damaged data (``OSError`` for a
truncated JPEG, but also ``SyntaxError``, ``ValueError``, ``struct.error``, ...), so decoding
catches ``Exception`` and reports the type in the skip's detail.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.data.skips import Skipped, log_skip

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB with EXIF orientation applied and alpha flattened on white."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth greyscale array to 0..255 (16-bit range, or 0..1 for float data)."""
    values = arr.astype(np.float64)
    if mode == "F" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    elif mode in _SIXTEEN_BIT or (values.size and values.max() > 255):
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)


def decode_image(data: bytes, source: str) -> Image.Image | Skipped:
    """Decode image bytes fully (so truncation is caught here, not in a transform) to RGB."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return to_rgb(image)
    except Image.DecompressionBombError as err:
        return log_skip(Skipped("image_too_large", source, str(err)))
    except UnidentifiedImageError:
        return log_skip(Skipped("not_an_image", source, f"{len(data)} bytes"))
    except Exception as err:  # damaged data raises many types, see the module docstring
        return log_skip(Skipped("corrupt_image", source, f"{type(err).__name__}: {err}"))


def load_image(path: str | Path) -> Image.Image | Skipped:
    """Read and decode an image file; a missing or unreadable file becomes a ``Skipped``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return log_skip(Skipped("missing_file", str(path)))
    except OSError as err:
        return log_skip(Skipped("unreadable_file", str(path), f"{type(err).__name__}: {err}"))
    return decode_image(data, str(path))


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
