"""Turning stored bytes into what the model takes: an RGB PIL image and a clean caption.

``model.preprocessing`` accepts RGB images only and refuses anything else, so the conversion
happens here, once, for every data source (with ``model.preprocessing.upright_rgb``): EXIF orientation is applied (phones store portraits
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

from PIL import Image, UnidentifiedImageError

from model.preprocessing import upright_rgb
from training.data.skips import Skipped, log_skip

# EXIF orientation applied, then any mode to 8-bit RGB (shared with the indexer and service).
to_rgb = upright_rgb


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
