"""Where images come from: a folder, a CSV/JSONL manifest, or webdataset tar shards.

A source yields :class:`SourceItem` records in a stable order (sorted paths, manifest order, shard
order) with a stable ``id``: the manifest's ``id`` column, else the path relative to the folder or
manifest (POSIX separators), else the webdataset sample key. Stable ids and order are what let a
killed indexing job resume without duplicates.

Sources never raise for one bad entry: a duplicate id, a sample without an image member or a
corrupt shard becomes an item with ``error`` set, which :mod:`indexer.decode` turns into a
``Skipped`` record. Only a source that cannot be opened at all (missing folder, manifest without a
``path`` column) raises, with a message that says what to fix.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff", ".tif"})
# webdataset image members, in order of preference when a sample has several
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SourceKind = Literal["auto", "folder", "manifest", "webdataset"]


@dataclass
class SourceItem:
    """One image to decode: its id, where it is, metadata columns, and (for shards) its bytes."""

    id: str
    path: str  # a file path, or "<shard>#<member>" for a webdataset sample
    extra: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None
    key: str | None = None
    data: bytes | None = None  # already read (shards); files are read on demand
    error: str | None = None  # set when the source already knows this item cannot be used

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()


class _Dedup:
    """Turns a repeated id into an error item instead of a silent duplicate."""

    def __init__(self) -> None:
        self.first_seen: dict[str, str] = {}

    def check(self, item: SourceItem) -> SourceItem:
        if item.error is None:
            earlier = self.first_seen.get(item.id)
            if earlier is None:
                self.first_seen[item.id] = item.path
            else:
                item.error = f"duplicate id {item.id!r} (first seen at {earlier})"
        return item


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_folder(root: str | Path) -> Iterator[SourceItem]:
    """Every image file under ``root`` (recursive, sorted, any letter case of the extensions)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_name(name):
                path = Path(dirpath) / name
                yield SourceItem(id=path.relative_to(root).as_posix(), path=str(path))


def iter_manifest(manifest: str | Path) -> Iterator[SourceItem]:
    """Rows of a CSV (header row) or JSONL manifest with a ``path`` column and optional ``id``.

    Relative paths are resolved against the manifest's folder. Other columns become metadata.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    base = manifest.parent
    seen = _Dedup()
    for line_no, row in _manifest_rows(manifest):
        where = f"{manifest}:{line_no}"
        if not isinstance(row, dict):
            yield SourceItem(id=where, path=where, error="manifest line is not a JSON object")
            continue
        raw_path = str(row.get("path") or "").strip()
        if not raw_path:
            yield SourceItem(id=where, path=where, error="manifest row has an empty 'path'")
            continue
        rel = Path(raw_path)
        full = rel if rel.is_absolute() else base / rel
        given = row.get("id")
        item_id = str(given) if given not in (None, "") else rel.as_posix()
        extra = {k: v for k, v in row.items() if k not in ("path", "id")}
        yield seen.check(SourceItem(id=item_id, path=str(full), extra=extra))


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, Any]]:
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        with manifest.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(
                    f"manifest {manifest} needs a header row with a 'path' column "
                    f"(found columns: {reader.fieldnames})"
                )
            for row in reader:
                yield reader.line_num, row
    elif suffix in (".jsonl", ".ndjson"):
        with manifest.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, f"invalid JSON: {exc}"
    else:
        raise ValueError(f"manifest {manifest} must end in .csv or .jsonl")


def iter_webdataset(shards: Sequence[str | Path]) -> Iterator[SourceItem]:
    """Samples of webdataset tar shards, one item per sample key (its image member's bytes).

    A sample's key is its member name up to the first dot of the base name (webdataset's rule);
    its ``.txt`` member becomes ``caption`` and scalar fields of its ``.json`` member become
    metadata. A shard that turns out corrupt yields one error item naming what was lost.
    """
    seen = _Dedup()
    for shard in shards:
        for item in _iter_shard(str(shard)):
            yield seen.check(item)


def _iter_shard(shard: str) -> Iterator[SourceItem]:
    count = 0
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            key: str | None = None
            members: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if key is not None and k != key:
                    yield _sample_item(shard, key, members)
                    count += 1
                    members = {}
                key = k
                f = tar.extractfile(member)
                members[ext.lower()] = f.read() if f is not None else b""
            if key is not None:
                yield _sample_item(shard, key, members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield SourceItem(
            id=f"{shard}#corrupt",
            path=shard,
            shard=shard,
            error=f"shard is unreadable after {count} samples; the rest is lost: {exc}",
        )


def _split_key(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext if dot else ""


def _sample_item(shard: str, key: str, members: dict[str, bytes]) -> SourceItem:
    extra: dict[str, Any] = {}
    if "txt" in members:
        extra["caption"] = members["txt"].decode("utf-8", errors="replace").strip()
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
        if isinstance(meta, dict):
            extra.update({k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)})
    ext = next((e for e in SHARD_IMAGE_EXTENSIONS if e in members), None)
    item = SourceItem(id=key, path=f"{shard}#{key}", extra=extra, shard=shard, key=key)
    if ext is None:
        found = ", ".join(f".{e}" for e in sorted(members)) or "nothing"
        item.error = f"sample has no image member (.jpg/.jpeg/.png/.webp); found {found}"
    else:
        item.path = f"{shard}#{key}.{ext}"
        item.data = members[ext]
    return item


def expand_shards(spec: str) -> list[str]:
    """``shards/{00000..00009}.tar`` (webdataset brace range) or a glob -> sorted shard paths."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo)
        paths = [
            spec[: match.start()] + str(i).zfill(width) + spec[match.end() :]
            for i in range(int(lo), int(hi) + 1)
        ]
        return [p for q in paths for p in (sorted(glob.glob(q)) if glob.has_magic(q) else [q])]
    if glob.has_magic(spec):
        return sorted(glob.glob(spec))
    return [spec]


def detect_kind(spec: str | Path) -> Literal["folder", "manifest", "webdataset"]:
    """Folder of images, manifest (.csv/.jsonl), or webdataset (.tar, brace range, tar folder)."""
    s = str(spec)
    lower = s.lower()
    if lower.endswith((".csv", ".jsonl", ".ndjson")):
        return "manifest"
    if lower.endswith(".tar") or "{" in s or glob.has_magic(s):
        return "webdataset"
    path = Path(s)
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        if any(n.endswith(".tar") for n in names) and not any(map(is_image_name, names)):
            return "webdataset"
        return "folder"
    raise FileNotFoundError(f"image source {s} does not exist")


def iter_source(spec: str | Path, kind: SourceKind = "auto") -> Iterator[SourceItem]:
    """Items of any source; ``kind="auto"`` guesses it with :func:`detect_kind`."""
    resolved = detect_kind(spec) if kind == "auto" else kind
    if resolved == "folder":
        return iter_folder(spec)
    if resolved == "manifest":
        return iter_manifest(spec)
    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
    else:
        shards = expand_shards(str(spec))
    if not shards:
        raise FileNotFoundError(f"no webdataset shards match {spec}")
    return iter_webdataset(shards)
