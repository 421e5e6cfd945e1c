"""Synthetic shapes: a built-in image-caption set with ground-truth masks, generated from a seed.

Why it exists: the project has no pretrained LexVLA weights and tests may not download data,
yet training, retrieval evaluation and PatchDis (the paper's patch-level metric) all need image-caption
pairs whose answer is known. Each image holds one to three coloured shapes on a background;
the captions (``training.data.shape_language``) are generated from what was drawn, and every
pixel is labelled, so PatchDis can be computed with single-word class names from the vocabulary.

Sample ``i`` of ``ShapesDataset(n, seed, split)`` is a pure function of ``(seed, split, i)``:
it does not depend on ``n`` or on which other samples were drawn, and another seed or split
gives other samples (a held-out set is just another seed). Generation is numpy + Pillow only,
about a millisecond per 224 x 224 image.

Drawing rules that keep captions true:
- colours are distinct within an image, and the background is never close to a shape colour
  (plain, gradient or lightly noisy greyish tints, at least ``_MIN_BACKGROUND_DISTANCE`` away
  in RGB from every named colour);
- shapes never overlap: their bounding circles are kept apart, so every mask is complete;
- "small" and "large" are disjoint ranges of area (the same areas for every kind);
- masks come from the same rasterisation as the image (the image is painted through the
  instance mask), so a mask pixel is exactly a shape pixel.

Masks (``uint8``, H x W, 0 = background): ``kind`` holds ``1 + SHAPE_KINDS.index(kind)``,
``colour`` holds ``1 + COLOURS.index(colour)``, ``instance`` holds ``1 + i`` for ``shapes[i]``.
:data:`MASK_CLASSES` names every index, background included.
"""

from __future__ import annotations

import math
import random
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from training.data.shape_language import COLOURS, SHAPE_KINDS, SIZES, Shape, captions

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 140, 20),
    "brown": (125, 70, 25),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
MASK_CLASSES: dict[str, tuple[str, ...]] = {
    "kind": ("background", *SHAPE_KINDS),
    "colour": ("background", *COLOURS),
}

# Area-equivalent radius as a fraction of the image side. The ranges are disjoint (0.08 < 0.12)
# so "small" and "large" are never confused; at 224 px a small shape covers ~3-5 patches of 14.
_RADIUS = {"small": (0.06, 0.08), "large": (0.12, 0.15)}
_SHAPE_COUNT_WEIGHTS = (0.3, 0.4, 0.3)  # one, two, three shapes
_COLOUR_JITTER = 12  # per channel, so a colour is a region of RGB space, not one value
_MIN_BACKGROUND_DISTANCE = 100.0  # RGB distance from every named colour (jitter included)
_GAP = 0.02  # minimum free space between shapes' bounding circles, fraction of the side
_MAX_ROTATION = 20.0  # degrees; regular shapes stay recognisable and upright-ish
_GRADIENT_GRID = 16  # coarse grid a gradient is computed on before bilinear up-sampling


def _polygon_area_centroid(points: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    cx = ((x + np.roll(x, -1)) * cross).sum() / (6 * area)
    cy = ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    return abs(float(area)), np.array([cx, cy])


def _raw_outline(kind: str) -> np.ndarray:
    """Outline of a kind in image orientation (y down), any scale."""
    if kind == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
    if kind == "triangle":  # equilateral, pointing up
        angles = np.radians([-90, 30, 150])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if kind == "star":  # five points, inner radius 0.45 of the outer one
        angles = np.radians(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if kind == "heart":  # the classic parametric heart, lobes up
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y], axis=1)
    raise ValueError(f"no outline for {kind!r}")


@cache
def _template(kind: str) -> tuple[np.ndarray | None, float]:
    """Unit outline (area pi, centroid at 0) and its extent; ``None`` outline for the circle."""
    if kind == "circle":
        return None, 1.0
    points = _raw_outline(kind)
    area, centroid = _polygon_area_centroid(points)
    points = (points - centroid) * math.sqrt(math.pi / area)
    return points, float(np.linalg.norm(points, axis=1).max())


def _try_place(
    rng: random.Random, specs: list[tuple[str, str, str]], side: int
) -> list[Shape] | None:
    """Place shapes at random without overlap; ``None`` if one of them finds no room."""
    placed: list[Shape] = []
    for kind, colour, size in specs:
        radius = rng.uniform(*_RADIUS[size]) * side
        extent = _template(kind)[1] * radius
        low, high = extent + 1, side - extent - 1
        if low >= high:
            return None
        for _ in range(60):
            x, y = rng.uniform(low, high), rng.uniform(low, high)
            if all(math.hypot(x - s.x, y - s.y) >= extent + s.extent + _GAP * side for s in placed):
                angle = 0.0 if kind == "circle" else rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
                placed.append(Shape(kind, colour, size, x, y, radius, extent, angle))
                break
        else:
            return None
    return placed


def sample_layout(
    rng: random.Random, side: int, min_shapes: int = 1, max_shapes: int = 3
) -> list[Shape]:
    """Draw a shape count, distinct colours, kinds and sizes, and non-overlapping positions.

    Rejection sampling: a layout that does not fit (three large shapes rarely do) is redrawn
    from scratch, so the shapes that are kept are not biased towards the image edges.
    """
    if not 1 <= min_shapes <= max_shapes <= 3:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes <= 3, got {min_shapes}, {max_shapes}")
    counts = list(range(min_shapes, max_shapes + 1))
    weights = _SHAPE_COUNT_WEIGHTS[min_shapes - 1 : max_shapes]
    for _ in range(100):
        n = rng.choices(counts, weights)[0]
        colours = rng.sample(COLOURS, n)
        specs = [(rng.choice(SHAPE_KINDS), c, rng.choice(SIZES)) for c in colours]
        layout = _try_place(rng, specs, side)
        if layout is not None:
            return layout
    # Practically unreachable; a single small circle always fits.
    return _try_place(rng, [("circle", rng.choice(COLOURS), "small")], side) or []


def _background_colour(rng: random.Random) -> np.ndarray:
    """A greyish tint of varied lightness, far from every named colour."""
    named = np.array(list(COLOUR_RGB.values()), dtype=np.float64)
    while True:
        grey = rng.uniform(55, 200)
        tint = np.array([rng.uniform(0, 255) for _ in range(3)])
        mix = rng.uniform(0.0, 0.4)
        colour = (1 - mix) * grey + mix * tint
        if np.linalg.norm(named - colour, axis=1).min() >= _MIN_BACKGROUND_DISTANCE:
            return colour


def sample_background(rng: random.Random, side: int) -> Image.Image:
    """A side x side RGB background: plain, a linear gradient between two tints, or light noise."""
    style = rng.choices(("plain", "gradient", "noise"), (0.4, 0.35, 0.25))[0]
    first = _background_colour(rng)
    if style == "gradient":
        second = _background_colour(rng)
        while np.linalg.norm(second - first) < 40:  # a gradient you can see
            second = _background_colour(rng)
        # A linear ramp survives bilinear up-sampling exactly, so compute it on a coarse grid
        # and let Pillow's C resize fill the pixels (several times faster than numpy at 224).
        theta = rng.uniform(0, 2 * math.pi)
        coords = np.linspace(0.0, 1.0, _GRADIENT_GRID)
        t = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        coarse = (first + t[..., None] * (second - first)).round().astype(np.uint8)
        return Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)
    colour = tuple(int(c) for c in first.round())
    if style == "plain":
        return Image.new("RGB", (side, side), colour)
    amplitude = rng.randint(5, 12)
    noise = np.random.default_rng(rng.getrandbits(64)).integers(
        -amplitude, amplitude + 1, size=(side, side, 1), dtype=np.int16
    )
    return Image.fromarray((np.array(colour, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8))


def _outline_points(shape: Shape) -> list[tuple[float, float]]:
    points, _ = _template(shape.kind)
    assert points is not None
    a = math.radians(shape.angle)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    xy = points @ rotation.T * shape.radius + (shape.x, shape.y)
    return [(float(x), float(y)) for x, y in xy]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill: int | tuple[int, ...]) -> None:
    if shape.kind == "circle":
        r = shape.radius
        draw.ellipse((shape.x - r, shape.y - r, shape.x + r, shape.y + r), fill=fill)
    else:
        draw.polygon(_outline_points(shape), fill=fill)


def render(
    shapes: list[Shape], background: Image.Image, rng: random.Random
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Paint ``shapes`` over ``background`` (in place); returns the image and the three masks.

    The image and the instance mask are drawn with the same primitives and coordinates, so
    Pillow's rasteriser covers the same pixels in both: a mask pixel is exactly a shape pixel.
    """
    instance_canvas = Image.new("L", background.size, 0)
    image_draw, mask_draw = ImageDraw.Draw(background), ImageDraw.Draw(instance_canvas)
    kind_of = np.zeros(len(shapes) + 1, dtype=np.uint8)
    colour_of = np.zeros(len(shapes) + 1, dtype=np.uint8)
    for i, shape in enumerate(shapes, start=1):
        jitter = (rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER) for _ in range(3))
        rgb = tuple(
            min(255, max(0, c + j)) for c, j in zip(COLOUR_RGB[shape.colour], jitter, strict=True)
        )
        kind_of[i] = 1 + SHAPE_KINDS.index(shape.kind)
        colour_of[i] = 1 + COLOURS.index(shape.colour)
        _draw_shape(image_draw, shape, rgb)
        _draw_shape(mask_draw, shape, i)
    instance = np.asarray(instance_canvas, dtype=np.uint8)
    masks = {"kind": kind_of[instance], "colour": colour_of[instance], "instance": instance}
    return background, masks


def render_sample(
    index: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 224,
    min_shapes: int = 1,
    max_shapes: int = 3,
) -> dict[str, Any]:
    """Sample ``index`` of the shapes world for ``(seed, split)``; see :class:`ShapesDataset`."""
    # Seeding with a string hashes it with SHA-512: stable across runs and Python versions.
    key = f"shapes-{split}-{seed}-{index}"
    rng = random.Random(key)
    shapes = sample_layout(rng, image_size, min_shapes, max_shapes)
    image, masks = render(shapes, sample_background(rng, image_size), rng)
    texts = captions(shapes, rng)
    return {
        "image": image,
        "caption": texts[0],
        "captions": texts,
        "masks": masks,
        "shapes": shapes,
        "key": key,
    }


class ShapesDataset(Dataset):
    """``size`` synthetic samples; item ``i`` is ``render_sample(i, seed, split, ...)``.

    Items are dicts: ``image`` (PIL RGB), ``caption`` (canonical), ``captions`` (canonical and
    paraphrases), ``masks`` (``kind``, ``colour``, ``instance``; see the module docstring),
    ``shapes`` (list of :class:`~training.data.shape_language.Shape`) and ``key``.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        image_size: int = 224,
        split: str = "train",
        min_shapes: int = 1,
        max_shapes: int = 3,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.size, self.seed, self.image_size, self.split = size, seed, image_size, split
        self.min_shapes, self.max_shapes = min_shapes, max_shapes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return render_sample(
            index % self.size,
            self.seed,
            self.split,
            self.image_size,
            self.min_shapes,
            self.max_shapes,
        )
