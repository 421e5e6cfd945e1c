"""Where images come from: a folder, a CSV/JSONL manifest, or webdataset tar shards.

A source yields :class:`SourceItem` records in a stable order (sorted paths, manifest order,
shard order) with a stable ``id``: the manifest's ``id`` column, else the path as the manifest
writes it or relative to the folder (POSIX separators), else the webdataset sample key. Stable
ids and order are what let a killed indexing job resume without duplicates. Captions come along
as metadata (``caption``, and ``captions`` when a manifest gives an image several), with a
manifest's other columns, a sample's ``.json`` keys, and a folder image's ``album`` (its parent
folder relative to the root, "" at the root).

Sources never raise for one bad entry: a duplicate id, a sample without an image member or a
corrupt shard becomes an item whose ``error`` is a :class:`~model.data.skips.Skipped` marker.
Only a source that cannot be opened at all (missing folder, a manifest without an image column,
a pattern that matches no shard) raises, with a message that says what to fix. Image bytes are
read when :meth:`SourceItem.read_bytes` is called, in whichever thread decodes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.data.decode import DecodeError, read_file
from model.data.manifest import is_manifest, read_manifest
from model.data.shards import (
    CAPTION_EXTENSION,
    METADATA_EXTENSION,
    ShardRecord,
    is_hidden,
    looks_like_shards,
    read_members,
    resolve_shards,
    shard_records,
)
from model.data.skips import Skipped

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff", ".tif"})
SourceKind = Literal["auto", "folder", "manifest", "webdataset"]


@dataclass
class SourceItem:
    """One image to decode: its id, where it is, metadata, and how to read its bytes."""

    id: str
    path: str  # a file path, or "<shard>#<key>.<ext>" (shard path, member name) for a sample
    extra: dict[str, Any] = field(default_factory=dict)
    record: ShardRecord | None = None  # webdataset samples: read from the shard on demand
    image_member: str | None = None
    data: bytes | None = None  # bytes already in memory (uploads, tests)
    error: Skipped | None = None  # set when the source already knows the item is unusable
    metadata: dict[str, Any] = field(default_factory=dict)  # typed fields (the indexer sets them)

    def read_bytes(self) -> bytes:
        """The image's bytes; DecodeError (with a skip reason) if they cannot be read."""
        if self.data is not None:
            return self.data
        if self.record is not None and self.image_member is not None:
            return read_members(self.record, [self.image_member])[self.image_member]
        return read_file(self.path)


def _failed(item_id: str, skipped: Skipped) -> SourceItem:
    marker = Skipped(skipped.reason, skipped.source, skipped.detail, item_id)
    return SourceItem(id=item_id, path=skipped.source, error=marker)


class _Dedup:
    """Turns a repeated id into an error item instead of a silent duplicate."""

    def __init__(self) -> None:
        self.first_seen: dict[str, str] = {}

    def check(self, item: SourceItem) -> SourceItem:
        if item.error is None:
            earlier = self.first_seen.setdefault(item.id, item.path)
            if earlier != item.path:
                detail = f"id {item.id!r} was first seen at {earlier}"
                item.error = Skipped("duplicate_id", item.path, detail, item.id)
        return item


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def iter_folder(root: str | Path) -> Iterator[SourceItem]:
    """Every image file under ``root`` (recursive, sorted, any letter case, no dot-files)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_name(name):
                path = Path(dirpath) / name
                rel = path.relative_to(root)
                album = "" if rel.parent == Path(".") else rel.parent.as_posix()
                yield SourceItem(id=rel.as_posix(), path=str(path), extra={"album": album})


def iter_manifest(path: str | Path, image_root: str | Path | None = None) -> Iterator[SourceItem]:
    """One item per distinct image of a manifest (``model.data.manifest``), in line order.

    The manifest is read when this is called (not at the first ``next``), so a manifest that
    cannot be read raises here.
    """
    manifest = read_manifest(path, image_root, require_caption=False)
    items = [(line, _failed(s.id or s.source, s)) for line, s in manifest.skipped]
    for image in manifest.images():
        extra = dict(image.extra)
        if image.captions:
            extra["caption"] = image.captions[0]
        if len(image.captions) > 1:
            extra["captions"] = image.captions
        items.append((image.line, SourceItem(id=image.id, path=str(image.image), extra=extra)))
    items.sort(key=lambda pair: pair[0])
    return iter([item for _, item in items])


def iter_webdataset(shards: Sequence[str | Path]) -> Iterator[SourceItem]:
    """One item per sample of the shards: caption from ``.txt``, ``.json`` fields as metadata."""
    seen = _Dedup()
    for shard in shards:
        for record in shard_records(Path(shard)):
            if isinstance(record, Skipped):
                yield _failed(f"{shard}#unreadable", record)
            else:
                yield seen.check(_sample_item(record))


def _sample_item(record: ShardRecord) -> SourceItem:
    ext = record.image_extension
    if ext is None:
        found = ", ".join(f".{e}" for e in sorted(record.members))
        return _failed(record.key, Skipped("missing_image", record.source, f"found {found}"))
    path = f"{record.shard}#{record.key}.{ext}"
    item = SourceItem(record.key, path, record=record, image_member=ext)
    text = [e for e in (CAPTION_EXTENSION, METADATA_EXTENSION) if e in record.members]
    try:
        data = read_members(record, text) if text else {}
    except DecodeError as err:
        return _failed(record.key, err.skipped(record.source, record.key))
    if CAPTION_EXTENSION in data:
        item.extra["caption"] = " ".join(data[CAPTION_EXTENSION].decode("utf-8", "replace").split())
    try:
        meta = json.loads(data[METADATA_EXTENSION]) if METADATA_EXTENSION in data else {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # optional metadata: not worth a skip
        meta = {}
    if isinstance(meta, dict):
        values = {k: v for k, v in meta.items() if v is not None}
        item.extra = {**values, **item.extra}
    return item


def detect_kind(spec: str | Path) -> Literal["folder", "manifest", "webdataset"]:
    """Folder of images, manifest (.csv/.jsonl), or webdataset (.tar, brace pattern, tar folder)."""
    s = str(spec)
    if is_manifest(s):
        return "manifest"
    if looks_like_shards(s):
        return "webdataset"
    path = Path(s)
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file() and not is_hidden(p.name)]
        if any(n.endswith(".tar") for n in names) and not any(map(is_image_name, names)):
            return "webdataset"
        return "folder"
    if path.exists():
        raise ValueError(
            f"image source {s} is a single file; give a folder of images, a .csv/.jsonl "
            "manifest or .tar shards"
        )
    raise FileNotFoundError(f"image source {s} does not exist")


def iter_source(
    spec: str | Path, kind: SourceKind = "auto", image_root: str | Path | None = None
) -> Iterator[SourceItem]:
    """Items of any source; ``kind="auto"`` guesses it with :func:`detect_kind`.

    Opening errors (FileNotFoundError, ValueError) are raised here, before the first item.
    """
    resolved = detect_kind(spec) if kind == "auto" else kind
    if resolved == "folder":
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"image folder {spec} does not exist or is not a folder")
        return iter_folder(spec)
    if resolved == "manifest":
        return iter_manifest(spec, image_root)
    return iter_webdataset(resolve_shards(spec))
