"""Image-caption manifests: a CSV or JSONL file of (local image path, caption) rows.

Columns (case-insensitive): the image is ``image``, ``path``, ``filepath`` or ``file``; the
caption is ``caption`` or ``text``. Relative paths resolve against ``image_root``, which
defaults to the manifest's folder; when the first image is not found there but is found in an
``images/`` folder beside the manifest (the layout of the shared Flickr8k sample), that folder
is used. Several rows with the same image are several captions of it.

Two views of the same rows:
- one item per row (training): ``{"image", "caption", "key", "image_id"}``;
- one item per image (``group_by_image=True``, retrieval evaluation): ``{"image", "caption",
  "captions", "key", "image_id"}`` with every caption of the image, so each image is decoded once.

``image_id`` numbers the distinct images in order of first appearance; it is the ground truth
that retrieval evaluation matches captions to images with.

Row problems (unparseable JSON, a missing field, an empty caption) are found when the manifest is
read, logged and counted in ``dataset.skips``. Image problems (missing file, corrupt image) are
found when an item is loaded: the item is a :class:`~training.data.skips.Skipped` marker, which
``training.data.collate`` drops and counts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from training.data.decode import clean_caption, load_image
from training.data.skips import SkipCounter, Skipped, log_skip

IMAGE_COLUMNS = ("image", "path", "filepath", "file")
CAPTION_COLUMNS = ("caption", "text")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class ManifestRow:
    image: Path
    caption: str
    image_id: int


def _pick(record: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def _raw_records(path: Path, skips: SkipCounter) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, record) for every row; malformed JSONL lines are counted and skipped."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [str(c).strip().lower() for c in reader.fieldnames or []]
            if not set(fields) & set(IMAGE_COLUMNS) or not set(fields) & set(CAPTION_COLUMNS):
                raise ValueError(
                    f"{path}: the header {fields} needs an image column (one of {IMAGE_COLUMNS}) "
                    f"and a caption column (one of {CAPTION_COLUMNS})"
                )
            for row in reader:
                yield reader.line_num, row
        return
    with path.open(encoding="utf-8-sig") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                skips.add(log_skip(Skipped("bad_row", f"{path}:{line_num}", str(err))).reason)
                continue
            if not isinstance(record, dict):
                skips.add(
                    log_skip(Skipped("bad_row", f"{path}:{line_num}", "not an object")).reason
                )
                continue
            yield line_num, record


def _guess_root(path: Path, first_image: str | None) -> Path:
    folder = path.parent
    if (
        first_image
        and not Path(first_image).is_absolute()
        and not (folder / first_image).exists()
        and (folder / "images" / first_image).exists()
    ):
        return folder / "images"
    return folder


def read_manifest(
    path: str | Path, image_root: str | Path | None = None, skips: SkipCounter | None = None
) -> list[ManifestRow]:
    """Parse a manifest into rows; invalid rows are counted in ``skips`` and left out."""
    path = Path(path)
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(f"{path}: a manifest ends in {' or '.join(MANIFEST_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    skips = skips if skips is not None else SkipCounter()
    parsed: list[tuple[str, str]] = []
    for line_num, record in _raw_records(path, skips):
        where = f"{path}:{line_num}"
        image = _pick(record, IMAGE_COLUMNS)
        if not isinstance(image, str) or not image.strip():
            skips.add(log_skip(Skipped("bad_row", where, "no image path")).reason)
            continue
        caption = clean_caption(_pick(record, CAPTION_COLUMNS), where)
        if isinstance(caption, Skipped):
            skips.add(caption.reason)
            continue
        parsed.append((image.strip(), caption))
    root = (
        Path(image_root)
        if image_root is not None
        else _guess_root(path, next(iter(parsed), ("",))[0])
    )
    ids: dict[Path, int] = {}
    rows = []
    for image, caption in parsed:
        full = root / image  # an absolute ``image`` replaces ``root``
        rows.append(ManifestRow(full, caption, ids.setdefault(full, len(ids))))
    return rows


class ManifestDataset(Dataset):
    """Map-style dataset over a manifest; see the module docstring for the two item views."""

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path | None = None,
        group_by_image: bool = False,
    ) -> None:
        self.path = Path(path)
        self.skips = SkipCounter()
        self.rows = read_manifest(self.path, image_root, self.skips)
        self.group_by_image = group_by_image
        self.images: list[Path] = []
        self.captions_of: list[list[str]] = []
        for row in self.rows:
            if row.image_id == len(self.images):
                self.images.append(row.image)
                self.captions_of.append([])
            self.captions_of[row.image_id].append(row.caption)

    def __len__(self) -> int:
        return len(self.images) if self.group_by_image else len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if self.group_by_image:
            image_id, path = index, self.images[index]
            caption, key = self.captions_of[index][0], f"image{index}"
        else:
            row = self.rows[index]
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
