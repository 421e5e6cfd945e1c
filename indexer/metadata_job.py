"""Metadata records at indexing: the file's and EXIF's fields, and a chunk's source fields typed.

The decoder (:mod:`indexer.decode`, in the loader's worker processes) reads :func:`file_fields`
and :func:`exif_fields` from an image's bytes; the runner (:mod:`indexer.runner`, in the job's
process, before a chunk is decoded) calls :func:`prepare_chunk`, which types the chunk's source
fields against the store's :class:`~indexer.metadata.FieldRegistry`, skips images whose values do
not parse, and rewrites the records of images that are already stored without re-encoding them.
:func:`chunk_identity` puts a chunk's metadata into its done key, so a source whose metadata
changed is looked at again. The fields and types are described in :mod:`indexer.metadata`.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import ExifTags, Image

from indexer.metadata import (
    COLLECTION,
    DEFAULT_COLLECTION,
    FieldRegistry,
    MetadataError,
    geo_point,
    source_fields,
)
from model.data import Skipped, SourceItem

if TYPE_CHECKING:
    from indexer.store import CorpusStore

_KEPT = ("file", "exif")  # where the fields come from that a metadata-only update keeps


def file_fields(path: str, data: bytes, on_disk: bool) -> dict[str, Any]:
    """``path``, ``bytes`` and, for a file on disk, ``modified_at`` (UTC)."""
    out: dict[str, Any] = {"path": path, "bytes": len(data)}
    if on_disk:
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return out
        out["modified_at"] = datetime.fromtimestamp(mtime, UTC).isoformat()
    return out


def exif_fields(data: bytes) -> dict[str, Any]:
    """Capture time, camera and GPS position from an image's EXIF; {} without (usable) EXIF."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            base = dict(exif)
            detail = dict(exif.get_ifd(ExifTags.IFD.Exif))
            gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
    except (
        Exception
    ):  # EXIF is optional: any failure to read it (Pillow raises many kinds) is "none"
        return {}
    out: dict[str, Any] = {}
    taken = _exif_time(
        detail.get(ExifTags.Base.DateTimeOriginal), detail.get(ExifTags.Base.OffsetTimeOriginal)
    )
    if taken is not None:
        out["taken_at"] = taken
    for name, tag in (("camera_make", ExifTags.Base.Make), ("camera_model", ExifTags.Base.Model)):
        text = _exif_text(base.get(tag))
        if text:
            out[name] = text
    point = _gps_point(gps)
    if point is not None:
        out["location"] = point
    return out


def _exif_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00 ").strip() if isinstance(value, str) else None


def _exif_time(value: Any, offset: Any) -> str | None:
    """EXIF ``YYYY:MM:DD HH:MM:SS`` (+ ``+HH:MM`` offset) -> ISO 8601; None if unparseable."""
    text = _exif_text(value)
    if not text:
        return None
    try:
        when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    zone = _exif_text(offset)
    if zone and re.fullmatch(r"[+-]\d\d:\d\d", zone):
        return datetime.fromisoformat(when.isoformat() + zone).isoformat()
    return when.isoformat()


def _gps_point(gps: Mapping[int, Any]) -> dict[str, float] | None:
    try:
        lat = _degrees(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef), "S")
        lon = _degrees(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef), "W")
        return geo_point({"lat": lat, "lon": lon})
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _degrees(dms: Sequence[Any], ref: Any, negative: str) -> float:
    degrees, minutes, seconds = (float(x) for x in dms)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if _exif_text(ref) == negative else value


# --- at indexing ------------------------------------------------------------------------------
def prepare_chunk(store: CorpusStore, items: Sequence[SourceItem], collection: str | None) -> int:
    """Type one chunk's source metadata before it is decoded; update already-stored images.

    New fields are inferred from this chunk's values. An item whose value does not parse gets a
    ``bad_metadata`` skip as its ``error`` (it is reported, never decoded). A new image gets its
    typed source fields on ``item.metadata`` (the decoder adds the file's and EXIF's), with
    ``collection`` defaulting to ``collection`` or :data:`DEFAULT_COLLECTION`. An image already
    in the store keeps its vector and its file/EXIF fields; its source fields are replaced
    (collection kept unless given). Returns how many stored records changed.
    """
    usable = [it for it in items if it.error is None]
    raw = {it.id: source_fields(it.extra) for it in usable}
    store.fields.infer(raw.values())
    stored = store.catalog.records([it.id for it in usable])  # one query per 500 ids
    updates: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for item in usable:
        try:
            typed = store.fields.coerce(raw[item.id])
        except MetadataError as err:
            item.error = Skipped("bad_metadata", item.path, str(err), item.id)
            continue
        old = stored.get(item.id)
        if old is None:
            typed.setdefault(COLLECTION, collection or DEFAULT_COLLECTION)
            item.metadata = typed
            continue
        record = _updated(store.fields, old.metadata, typed, collection)
        if record != old.metadata or item.extra != old.extra:
            updates[item.id] = (dict(item.extra), record)
    return store.update_metadata(updates)


def _updated(
    fields: FieldRegistry, old: dict[str, Any], typed: dict[str, Any], collection: str | None
) -> dict[str, Any]:
    """A stored image's new record: its file/EXIF fields, the source's fields, its collection."""
    kept = {k: v for k, v in old.items() if k in fields and fields.fields[k].source in _KEPT}
    return {**kept, COLLECTION: collection or old.get(COLLECTION, DEFAULT_COLLECTION), **typed}


def check_declarations(store: str | Path, specs: Sequence[str]) -> None:
    """Refuse ``--field`` declarations that contradict an existing store's registry (ValueError),
    from its manifest alone: before a job loads its model."""
    manifest = Path(store) / "manifest.json"
    if specs and manifest.is_file():
        FieldRegistry.from_json(json.loads(manifest.read_text()).get("fields", {})).declare(specs)


def chunk_identity(items: Sequence[SourceItem], collection: str | None) -> str:
    """What a chunk's done key names: its ids, and its source metadata and collection if any."""
    ids = "\n".join(it.id for it in items)
    extras = [source_fields(it.extra) for it in items]
    if collection is None and not any(extras):
        return ids
    return ids + "\n" + json.dumps([collection, extras], sort_keys=True, default=str)
