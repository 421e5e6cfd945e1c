"""COCO-style instance annotations -> per-image label maps for PatchDis (no pycocotools needed).

Reads an ``instances_*.json`` file (``images``, ``annotations``, ``categories``) and paints
each image's annotations into one uint8 label map: 0 is background, ``1 + i`` is the ``i``-th
category of the file. Larger objects are painted first, so a small object lying on a larger
one stays visible. Segmentations can be polygons (lists of ``x1, y1, x2, y2, ...``),
uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string): RLE runs
alternate background and foreground, start with background, and walk the image column by
column; compressed counts are COCO's 6-bit character code with delta coding from the third
count on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from model.data import Skipped, load_image


def rle_counts_from_string(text: str) -> list[int]:
    """Decode COCO's compressed RLE counts string into run lengths."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE string ends inside a number")
            char = ord(text[pos]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            pos += 1
            shift += 5
            if not more and char & 0x10:  # the last group's sign bit: negative
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(counts: list[int] | str, height: int, width: int) -> np.ndarray:
    """A binary (height, width) uint8 mask from RLE counts (list or compressed string)."""
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else list(counts)
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE counts sum to {sum(runs)}, expected {height * width}")
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()  # column-major


def decode_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return decode_polygons(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        h, w = segmentation.get("size", (height, width))
        return decode_rle(segmentation["counts"], int(h), int(w))
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")


def label_map(
    annotations: list[dict[str, Any]], height: int, width: int, class_of: dict[int, int]
) -> np.ndarray:
    """Paint annotations (largest first) into a uint8 map of class indices (0 = background)."""
    out = np.zeros((height, width), dtype=np.uint8)
    for ann in sorted(annotations, key=lambda a: -float(a.get("area", 0.0))):
        if ann.get("category_id") not in class_of:
            continue
        mask = decode_segmentation(ann["segmentation"], height, width)
        out[mask.astype(bool)] = class_of[ann["category_id"]]
    return out


def guess_image_root(annotations: Path) -> Path:
    """``.../annotations/instances_val2017.json`` -> ``.../val2017`` (COCO's layout)."""
    split = annotations.stem.removeprefix("instances_")
    return annotations.parent.parent / split


class CocoMasks(Dataset):
    """Items ``{"image", "caption": "", "key", "masks": {"coco": label map}}`` of a COCO file."""

    def __init__(
        self,
        annotations: str | Path,
        image_root: str | Path | None = None,
        max_images: int | None = None,
    ) -> None:
        path = Path(annotations)
        data = json.loads(path.read_text())
        categories = data["categories"]
        if len(categories) > 254:
            raise ValueError(f"{path}: {len(categories)} categories do not fit a uint8 label map")
        self.class_names = [str(c["name"]) for c in categories]
        self.class_of = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
        self.image_root = Path(image_root) if image_root is not None else guess_image_root(path)
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"COCO images folder {self.image_root} not found; pass --image-root"
            )
        self.images = list(data["images"])[:max_images]
        self.by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            self.by_image.setdefault(int(ann["image_id"]), []).append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        info = self.images[index]
        image = load_image(self.image_root / info["file_name"])
        if isinstance(image, Skipped):
            return image
        h, w = int(info["height"]), int(info["width"])
        if image.size != (w, h):
            image = image.resize((w, h))  # trust the annotation's geometry
        labels = label_map(self.by_image.get(int(info["id"]), []), h, w, self.class_of)
        return {"image": image, "caption": "", "key": str(info["id"]), "masks": {"coco": labels}}
