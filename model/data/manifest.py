"""Image manifests: a CSV (header row) or JSONL file with one row per (image, caption).

Columns, case-insensitive, the same for training and the indexer: the image is ``image``,
``path``, ``filepath`` or ``file``; the caption is ``caption`` or ``text``; an optional ``id``
names the image (otherwise its path as written, POSIX separators). Other columns are kept as
metadata. Relative paths resolve against ``image_root``, which defaults to the manifest's
folder; when the first image is not found there but is found in an ``images/`` folder beside the
manifest (the layout of the Flickr8k sample: ``captions.csv`` + ``images/``), that folder is used.

Several rows with the same id and image are several captions of one image: training can use one
item per row, retrieval evaluation and the indexer one per image (:meth:`Manifest.images`). A row
that reuses an earlier id for a *different* image is skipped as ``duplicate_id``. Other row
problems (unparseable JSON, no image field, an empty caption where captions are required) are
skipped as ``bad_row`` / ``empty_caption``; rows are never dropped silently. Only a manifest that
cannot be read at all (missing file, wrong suffix, a CSV header without the needed columns)
raises, with a one-line message saying what to fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.decode import clean_caption
from model.data.skips import Skipped, log_skip

IMAGE_COLUMNS = ("image", "path", "filepath", "file")
CAPTION_COLUMNS = ("caption", "text")
ID_COLUMNS = ("id",)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class ManifestRow:
    image: Path  # resolved against the image root
    caption: str | None  # None only when captions are not required and the row has none
    image_id: int  # number of the distinct image, in order of first appearance
    id: str = ""
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ManifestImage:
    """One distinct image of a manifest with every caption of it."""

    id: str
    image: Path
    captions: list[str]
    line: int  # the line it first appears on
    extra: dict[str, Any]


@dataclass
class Manifest:
    path: Path
    root: Path
    rows: list[ManifestRow]
    skipped: list[tuple[int, Skipped]]  # (line, marker), in line order

    def images(self) -> list[ManifestImage]:
        """The distinct images in order of first appearance, each with all its captions."""
        out: list[ManifestImage] = []
        for row in self.rows:
            if row.image_id == len(out):
                out.append(ManifestImage(row.id, row.image, [], row.line, dict(row.extra)))
            if row.caption is not None:
                out[row.image_id].captions.append(row.caption)
        return out


def is_manifest(spec: str | Path) -> bool:
    return str(spec).lower().endswith(MANIFEST_SUFFIXES)


def _pick(record: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): k for k in record if k is not None}
    key = next((lowered[n] for n in names if n in lowered), None)
    return key, (record[key] if key is not None else None)


def _csv_rows(path: Path, require_caption: bool) -> Iterator[tuple[int, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [str(c).strip().lower() for c in reader.fieldnames or []]
        needs = [("an image", IMAGE_COLUMNS)] + ([("a caption", CAPTION_COLUMNS)] * require_caption)
        for what, names in needs:
            if not set(fields) & set(names):
                raise ValueError(
                    f"manifest {path}: the header {fields} needs {what} column (one of "
                    f"{', '.join(names)}); the first line of a CSV manifest names its columns"
                )
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8-sig") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_num, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_num, Skipped("bad_row", f"{path}:{line_num}", f"invalid JSON: {err}")


def _raw_rows(path: Path, require_caption: bool) -> Iterator[tuple[int, Any]]:
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, require_caption)
    return _jsonl_rows(path)


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


def _parse(
    line: int, where: str, record: Any, require_caption: bool
) -> tuple[str, str | None, str, dict[str, Any]] | Skipped:
    """A raw record -> (image, caption, id, extra), or the reason it cannot be used."""
    if isinstance(record, Skipped):
        return record
    if not isinstance(record, dict):
        return Skipped("bad_row", where, "not a JSON object")
    image_key, image = _pick(record, IMAGE_COLUMNS)
    if not isinstance(image, str) or not image.strip():
        return Skipped("bad_row", where, "no image path")
    caption_key, raw_caption = _pick(record, CAPTION_COLUMNS)
    caption: str | None = None
    if raw_caption is not None or require_caption:
        cleaned = clean_caption(
            raw_caption if isinstance(raw_caption, str | bytes) else None, where
        )
        if isinstance(cleaned, Skipped):
            if require_caption:
                return cleaned
        else:
            caption = cleaned
    id_key, given = _pick(record, ID_COLUMNS)
    image = image.strip()
    item_id = str(given).strip() if given not in (None, "") else Path(image).as_posix()
    used = {image_key, caption_key, id_key}
    extra = {str(k): v for k, v in record.items() if k is not None and k not in used}
    return image, caption, item_id, extra


def read_manifest(
    path: str | Path, image_root: str | Path | None = None, *, require_caption: bool = True
) -> Manifest:
    """Parse a manifest (see the module docstring); unusable rows come back in ``skipped``."""
    path = Path(path)
    if not is_manifest(path):
        raise ValueError(f"manifest {path}: a manifest ends in {', '.join(MANIFEST_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    parsed: list[tuple[int, str, str | None, str, dict[str, Any]]] = []
    skipped: list[tuple[int, Skipped]] = []
    try:
        for line, record in _raw_rows(path, require_caption):
            result = _parse(line, f"{path}:{line}", record, require_caption)
            if isinstance(result, Skipped):
                skipped.append((line, log_skip(result)))
            else:
                parsed.append((line, *result))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"manifest {path} cannot be read as UTF-8 {path.suffix}: {err}") from None
    root = (
        Path(image_root)
        if image_root is not None
        else _guess_root(path, next((p[1] for p in parsed), None))
    )
    first: dict[str, tuple[Path, int]] = {}  # id -> (image, image_id)
    rows: list[ManifestRow] = []
    for line, image, caption, item_id, extra in parsed:
        full = root / image  # an absolute ``image`` replaces ``root``
        seen = first.setdefault(item_id, (full, len(first)))
        if seen[0] != full:
            detail = f"id {item_id!r} was given to {seen[0]} first; this row names {full}"
            skipped.append(
                (line, log_skip(Skipped("duplicate_id", f"{path}:{line}", detail, item_id)))
            )
            continue
        rows.append(ManifestRow(full, caption, seen[1], item_id, line, extra))
    skipped.sort(key=lambda pair: pair[0])
    return Manifest(path, root, rows, skipped)
