"""Heat maps: where a word is in an image, drawn over the image with Pillow.

The image encoder's patch-level lexical vectors (``LexVLA.patch_vectors``, one per 14x14 patch of
the 224x224 centre crop, a 16x16 grid) give every word a score per patch. A word's map is that
grid, min-max normalised for display. It covers the region the model saw: the image resized to
224 on its shorter side and centre-cropped, which is also what the PNG shows.

The colours follow matplotlib's ``inferno`` colour map (Nathaniel Smith and Stéfan van der
Walt's perceptually uniform maps), interpolated linearly between five anchors: the upper three
are inferno's colours at 1/2, 3/4 and 1 (red, orange, pale yellow); the lower two are a deep
blue and a violet, lighter and bluer than inferno's near-black start, so that weak regions tint
the photograph instead of blacking it out (dark = little evidence, bright = strong evidence).
The overlay is more opaque where the word is stronger, so weak regions still show the photograph.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.preprocessing import centre_crop

# (position, RGB) anchors (the upper three are inferno's), interpolated into a 256-entry table.
_ANCHORS = [
    (0.00, (13, 8, 64)),
    (0.25, (84, 23, 140)),
    (0.50, (187, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
]


def colormap_table() -> np.ndarray:
    """256 x 3 uint8 lookup table of the ramp."""
    x = np.linspace(0.0, 1.0, 256)
    pos = [p for p, _ in _ANCHORS]
    channels = [np.interp(x, pos, [c[k] for _, c in _ANCHORS]) for k in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8)


_TABLE = colormap_table()


def normalise(grid: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a flat map becomes all zeros)."""
    grid = np.asarray(grid, dtype=np.float64)
    lo, hi = float(grid.min()), float(grid.max())
    if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
        return np.zeros_like(grid)
    return (grid - lo) / (hi - lo)


def model_view(image: Image.Image, image_size: int) -> Image.Image:
    """The centre crop the image encoder sees (``model.preprocessing.centre_crop`` itself)."""
    return centre_crop(image, image_size)


def overlay(image: Image.Image, grid: np.ndarray, image_size: int, size: int = 448) -> Image.Image:
    """The word's map (``grid``: g x g raw scores) blended over the model's view of ``image``."""
    base = model_view(image.convert("RGB"), image_size).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    levels = (normalise(grid) * 255).round().astype(np.uint8)
    heat = Image.fromarray(levels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    value = np.asarray(heat, dtype=np.float32) / 255.0
    colour = _TABLE[np.asarray(heat)].astype(np.float32)
    alpha = (0.25 + 0.55 * value)[..., None]
    photo = np.asarray(base, dtype=np.float32)
    blended = photo * (1.0 - alpha) + colour * alpha
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
