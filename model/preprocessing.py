"""Image preprocessing for the image encoder: 224 px crops with DINOv2's ImageNet normalisation.

The encoder takes RGB images only and raises a ValueError that says so for anything else, rather
than silently producing a different vector. Whoever reads files converts them first with
:func:`to_rgb` (any Pillow mode) or :func:`upright_rgb` (also applies EXIF orientation);
``model.data.decode`` does both for training, the indexer and the service.
Eval: :func:`centre_crop` (resize the shorter side, centre crop). Train: random resized crop and
horizontal flip.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

# DINOv2 uses the ImageNet statistics.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha flattened on white, high bit depths scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_to_8bit(image).convert("RGB")
    return image.convert("RGB")


def upright_rgb(image: Image.Image) -> Image.Image:
    """:func:`to_rgb` after applying the EXIF orientation (how a viewer shows the photo)."""
    return to_rgb(ImageOps.exif_transpose(image) or image)


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> L: 16-bit range /257, [0, 1] floats x255."""
    arr = np.asarray(image).astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if image.mode == "F" and top <= 1.0:
        arr = arr * 255.0
    elif image.mode.startswith("I;16") or 255 < top <= 65535:
        arr = arr / 257.0
    elif top > 65535:
        arr = arr * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), mode="L")


def check_rgb(image: object, position: int | None = None) -> Image.Image:
    where = "" if position is None else f" at position {position}"
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image{where}, got {type(image).__name__}")
    if image.mode != "RGB":
        raise ValueError(
            f"image{where} has mode {image.mode!r}; the encoder takes RGB only. Convert it first "
            "(model.preprocessing.upright_rgb handles CMYK, palette, 16-bit, alpha and EXIF)."
        )
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image{where} is empty ({image.width}x{image.height})")
    return image


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> its bytes as a uint8 tensor (3, H, W), a quarter of the float size."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


_STATISTICS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a host-to-device copy per batch would wait for the GPU's queue.
    if device not in _STATISTICS:
        mean = torch.tensor(MEAN, device=device).view(3, 1, 1)
        _STATISTICS[device] = (mean, torch.tensor(STD, device=device).view(3, 1, 1))
    return _STATISTICS[device]


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> float32 with DINOv2's normalisation, on the pixels' device.

    The same float32 arithmetic on any device, so normalising on the GPU (what the indexer does
    with the uint8 batches its DataLoader workers produce) gives the CPU's values.
    """
    mean, std = _statistics(pixels.device)
    return (pixels.float() / 255.0 - mean) / std


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor (3, H, W)."""
    return normalize(to_uint8_tensor(image))


def centre_crop(
    image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resize the shorter side to ``size``, then cut the central ``size`` x ``size`` square.

    The one geometry of the encoder's view: the eval transform, the heat maps drawn over it
    and the evaluation masks (with ``NEAREST`` for label maps) all call this, so a patch of
    the grid always covers the same pixels everywhere.
    """
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = image.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return resized.crop((left, top, left + size, top + size))


def eval_transform(image: Image.Image, size: int) -> torch.Tensor:
    """:func:`centre_crop` (bicubic) -> normalised tensor."""
    return to_tensor(centre_crop(check_rgb(image), size))


def eval_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """:func:`centre_crop` as uint8 (3, size, size); ``normalize`` of it is :func:`eval_transform`."""
    return to_uint8_tensor(centre_crop(check_rgb(image), size))


def train_transform(
    image: Image.Image,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop (area ``scale``, aspect ``ratio``) then a random horizontal flip."""
    check_rgb(image)
    w, h = image.size
    box = (0, 0, w, h)
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            box = (left, top, left + cw, top + ch)
            break
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(image)


def batch_eval(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """A list of RGB PIL images -> (B, 3, size, size); raises on an empty list or non-RGB image."""
    if len(images) == 0:
        raise ValueError("empty batch: pass at least one image")
    return torch.stack([eval_transform(check_rgb(im, i), size) for i, im in enumerate(images)])
