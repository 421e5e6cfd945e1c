"""Evaluation sets, one item per image with all its captions (and masks where there are any).

Spec forms:
- ``shapes:N``: N held-out synthetic shapes (split ``test``, seed from the settings), with every
  caption of each image and ``kind`` / ``colour`` masks for PatchDis;
- a ``.csv`` / ``.jsonl`` manifest (the shared ``flickr8k-sample/captions.csv`` form):
  rows of (image, caption), grouped by image;
- a ``.json`` file in Karpathy's form (``dataset_flickr30k.json``, ``dataset_coco.json``):
  ``images`` with ``filename`` (and COCO's ``filepath``), ``split`` and ``sentences[].raw``;
  only the images of the chosen split (``test``: Flickr30k 1K, COCO 5K);
- ``coco:ANNOTATIONS.json`` (PatchDis only): COCO instance masks (``coco_masks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from model.data import Skipped, load_image
from training.data import MASK_CLASSES, build_dataset
from training.evaluation.coco_masks import CocoMasks


class KarpathySplit(Dataset):
    """The images of one split of a Karpathy-format JSON file, with their reference captions."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None, split: str = "test"):
        path = Path(path)
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"{path} is not a Karpathy-format file (no 'images' list)")
        root = Path(image_root) if image_root is not None else path.parent
        self.rows: list[tuple[Path, list[str]]] = []
        for entry in data["images"]:
            if entry.get("split") != split:
                continue
            captions = [" ".join(s["raw"].split()) for s in entry.get("sentences", [])]
            captions = [c for c in captions if c]
            if captions:
                self.rows.append((root / entry.get("filepath", "") / entry["filename"], captions))
        if not self.rows:
            raise ValueError(f"{path}: no images with captions in split {split!r}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        path, captions = self.rows[index]
        image = load_image(path)
        if isinstance(image, Skipped):
            return image
        return {
            "image": image,
            "caption": captions[0],
            "captions": list(captions),
            "key": f"image{index}",
            "image_id": index,
        }


def eval_dataset(
    spec: str,
    *,
    image_size: int,
    image_root: str | None = None,
    split: str = "test",
    seed: int = 0,
    max_images: int | None = None,
) -> Dataset:
    """The dataset ``spec`` names (module docstring), cut to ``max_images`` images."""
    spec = spec.strip()
    dataset: Dataset
    if spec.startswith("coco:"):
        return CocoMasks(spec.removeprefix("coco:"), image_root, max_images)
    if spec.lower().endswith(".json"):
        dataset = KarpathySplit(spec, image_root, split)
    else:
        dataset = build_dataset(
            spec, split, seed=seed, image_size=image_size, image_root=image_root
        )
    size = len(dataset)  # type: ignore[arg-type]
    if max_images is not None and max_images < size:
        dataset = Subset(dataset, range(max_images))
    return dataset


def mask_classes(dataset: Dataset) -> dict[str, list[str]]:
    """Foreground class names of each mask a dataset carries (index ``i`` is mask value i+1)."""
    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    if isinstance(inner, CocoMasks):
        return {"coco": list(inner.class_names)}
    if type(inner).__name__ == "ShapesDataset":
        return {name: list(classes[1:]) for name, classes in MASK_CLASSES.items()}
    return {}
