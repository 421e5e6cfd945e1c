"""Image-caption manifests as a map-style dataset (the format itself is ``model.data.manifest``).

Two views of the same rows:
- one item per row (training): ``{"image", "caption", "key", "image_id"}``;
- one item per image (``group_by_image=True``, retrieval evaluation): ``{"image", "caption",
  "captions", "key", "image_id"}`` with every caption of the image, so each image is decoded once.

``image_id`` numbers the distinct images in order of first appearance; it is the ground truth
that retrieval evaluation matches captions to images with.

Row problems (unparseable JSON, a missing field, an empty caption, a duplicate id) are found when
the manifest is read, logged and counted in ``dataset.skips``. Image problems (missing file,
corrupt image) are found when an item is loaded: the item is a :class:`~model.data.Skipped`
marker, which ``training.data.collate`` drops and counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from model.data import SkipCounter, Skipped, load_image, read_manifest


class ManifestDataset(Dataset):
    """Map-style dataset over a manifest; see the module docstring for the two item views."""

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path | None = None,
        group_by_image: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path, image_root, require_caption=True)
        self.skips = SkipCounter()
        for _, skipped in self.manifest.skipped:
            self.skips.add(skipped.reason)
        self.rows = self.manifest.rows
        self.group_by_image = group_by_image
        grouped = self.manifest.images()
        self.images: list[Path] = [g.image for g in grouped]
        self.captions_of: list[list[str]] = [g.captions for g in grouped]

    def __len__(self) -> int:
        return len(self.images) if self.group_by_image else len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if self.group_by_image:
            image_id, path = index, self.images[index]
            caption, key = self.captions_of[index][0], f"image{index}"
        else:
            row = self.rows[index]
            assert row.caption is not None  # read with require_caption=True
            image_id, path, caption, key = row.image_id, row.image, row.caption, f"row{index}"
        image = load_image(path)
        if isinstance(image, Skipped):
            return image
        item: dict[str, Any] = {
            "image": image,
            "caption": caption,
            "key": key,
            "image_id": image_id,
        }
        if self.group_by_image:
            item["captions"] = list(self.captions_of[index])
        return item
