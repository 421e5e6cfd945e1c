"""Per-image metadata recorded at indexing: typed fields, their registry, and where values come from.

Every image gets one metadata record, a flat JSON object ``{field: value}``, built at indexing
(:mod:`indexer.metadata_job`) from

- the file: ``path``, ``album`` (folder sources: the parent folder relative to the source root,
  "" at the root), ``bytes`` and ``modified_at`` (the file's modification time, UTC);
- its EXIF (Pillow's ``Image.getexif``): ``taken_at`` (DateTimeOriginal, with
  OffsetTimeOriginal when present), ``camera_make``, ``camera_model``, ``location`` (GPS IFD);
  a file without EXIF simply has none of these;
- the source: every extra column of a CSV manifest, every extra key of a JSONL manifest and
  every key of a webdataset sample's ``.json`` member (captions excepted: they are text, kept in
  the catalog's ``extra``); a source value wins over the file's and the EXIF's;
- its collection: the image's ``collection`` column/key, else the job's ``--collection``, else
  ``default`` (a slug, :func:`check_collection`).

Types (:data:`FIELD_TYPES`) and their stored form: ``keyword`` (str), ``keywords`` (list of str),
``integer`` (int), ``float`` (float), ``datetime`` (ISO 8601 str, its offset kept when given;
values without one are local times), ``geo`` (``{"lat": float, "lon": float}``). The
:class:`FieldRegistry` maps each field to its type and where the type came from: ``file`` /
``exif`` / ``collection`` (built in), ``declared`` (``--field name:type``) or ``inferred``. A new
source field's type is inferred from all its values in the chunk that first carries it
(:func:`infer_type`: conservative, so ``2021-06-01`` strings are datetimes only when every value
parses and a ``a|b`` cell stays one keyword unless ``keywords`` is declared); from then on every
value must parse as that type, or the image is skipped with reason ``bad_metadata`` naming the
field and the value. A type, once recorded, never changes: declaring another is refused. The
registry lives in the corpus store (:mod:`indexer.catalog`), which says how records are stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FIELD_TYPES = ("keyword", "keywords", "integer", "float", "datetime", "geo")
DEFAULT_COLLECTION = "default"
COLLECTION = "collection"
# Source keys that are no metadata field: captions are the text side of an image, not a filter.
NOT_FIELDS = frozenset({"caption", "captions"})
_COLLECTION_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")
_FIELD_NAME = re.compile(r"[^:\s][^:]{0,63}")  # a manifest's column names, as written


@dataclass(frozen=True)
class Field:
    """One metadata field: its name, its type and where that type came from."""

    name: str
    type: str
    source: str  # file | exif | collection | declared | inferred


BUILTIN_FIELDS = {
    f.name: f
    for f in (
        Field("path", "keyword", "file"),
        Field("album", "keyword", "file"),
        Field("bytes", "integer", "file"),
        Field("modified_at", "datetime", "file"),
        Field("taken_at", "datetime", "exif"),
        Field("camera_make", "keyword", "exif"),
        Field("camera_model", "keyword", "exif"),
        Field("location", "geo", "exif"),
        Field(COLLECTION, "keyword", "collection"),
    )
}


class MetadataError(ValueError):
    """A value that does not parse as its field's type (one line: field, value, type)."""


def check_collection(name: str) -> str:
    """``name`` if it is a collection slug (a-z, 0-9, ``-``, ``_``; 64 at most), else ValueError."""
    if not isinstance(name, str) or not _COLLECTION_SLUG.fullmatch(name):
        raise ValueError(
            f"collection {name!r} is not a slug: use 1-64 of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def parse_declaration(spec: str) -> tuple[str, str]:
    """``"name:type"`` (a ``--field`` value) -> (name, type); ValueError says what is wrong."""
    name, sep, kind = spec.partition(":")
    name, kind = name.strip(), kind.strip()
    if not sep or not _FIELD_NAME.fullmatch(name) or kind not in FIELD_TYPES:
        raise ValueError(
            f"--field {spec!r} must be NAME:TYPE with TYPE one of {', '.join(FIELD_TYPES)} "
            "(NAME: a column or key name, 1-64 characters, no ':')"
        )
    return name, kind


class FieldRegistry:
    """Field name -> :class:`Field`; the built-in fields are always there."""

    def __init__(self, fields: Iterable[Field] = ()) -> None:
        self.fields: dict[str, Field] = dict(BUILTIN_FIELDS)
        self.fields.update((f.name, f) for f in fields)

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, str]]) -> FieldRegistry:
        return cls(Field(name, v["type"], v["source"]) for name, v in data.items())

    def to_json(self) -> dict[str, dict[str, str]]:
        return {n: {"type": f.type, "source": f.source} for n, f in sorted(self.fields.items())}

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def type_of(self, name: str) -> str:
        return self.fields[name].type

    def declare(self, specs: Sequence[str]) -> list[Field]:
        """Add ``--field name:type`` declarations; the new ones are returned.

        Declaring a field's recorded type again is a no-op; another type is refused (ValueError):
        the values already stored were checked against the recorded one.
        """
        added = []
        for spec in specs:
            name, kind = parse_declaration(spec)
            known = self.fields.get(name)
            if known is not None and known.type != kind:
                raise ValueError(
                    f"--field {name}:{kind} refused: {name!r} is already of type {known.type} "
                    f"({known.source}) in this store; a type cannot change"
                )
            if known is None:
                self.fields[name] = added_field = Field(name, kind, "declared")
                added.append(added_field)
        return added

    def absorb(self, other: FieldRegistry) -> None:
        """Add ``other``'s fields (merging stores); ValueError if a field's types differ."""
        for name, theirs in other.fields.items():
            ours = self.fields.setdefault(name, theirs)
            if ours.type != theirs.type:
                raise ValueError(
                    f"field {name!r} is of type {theirs.type} there but {ours.type} here; declare "
                    f"its type (--field {name}:TYPE) when building every part"
                )

    def infer(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Record the type of each field not known yet, inferred from all its values here."""
        values: dict[str, list[Any]] = {}
        for record in records:
            for name, value in record.items():
                if name not in self.fields and value is not None:
                    values.setdefault(name, []).append(value)
        for name in sorted(values):
            self.fields[name] = Field(name, infer_type(values[name]), "inferred")

    def coerce(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A record's values in their fields' stored form; MetadataError names the bad one.

        Every field must be registered already (:meth:`infer` first); None values are dropped.
        """
        out: dict[str, Any] = {}
        for name, value in record.items():
            if value is None:
                continue
            kind = self.fields[name].type
            try:
                out[name] = coerce_value(kind, value)
            except (TypeError, ValueError):
                shown = json.dumps(value, ensure_ascii=False, default=str)
                if len(shown) > 80:
                    shown = shown[:77] + "..."
                raise MetadataError(
                    f"field {name!r}: {shown} is not of type {kind} (declare --field {name}:TYPE "
                    "for another type in a new store, or fix the value)"
                ) from None
        if COLLECTION in out:
            try:
                check_collection(out[COLLECTION])
            except ValueError as err:
                raise MetadataError(f"field 'collection': {err}") from None
        return out


# --- types --------------------------------------------------------------------------------------
def infer_type(values: Sequence[Any]) -> str:
    """The type all ``values`` of one field parse as; ``keyword`` when in doubt."""
    kinds = {_value_kind(v) for v in values}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds == {"integer", "float"}:
        return "float"
    return "keyword"


def _value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "keyword"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "keyword"
    if isinstance(value, list):
        return "keywords" if value and all(isinstance(v, str) for v in value) else "keyword"
    if isinstance(value, dict):
        return "geo" if _is_point(value) else "keyword"
    if isinstance(value, str):
        text = value.strip()
        # plain decimals only: "007" (a code) and "1e5" stay keywords
        if _INTEGER_TEXT.fullmatch(text):
            return "integer"
        if _FLOAT_TEXT.fullmatch(text):
            return "float"
        try:
            coerce_value("datetime", text)
        except (TypeError, ValueError):
            return "keyword"
        return "datetime"
    return "keyword"


def _is_point(value: Mapping[str, Any]) -> bool:
    try:
        geo_point(value)
    except (TypeError, ValueError):
        return False
    return True


def coerce_value(kind: str, value: Any) -> Any:
    """One value in the stored form of ``kind``; TypeError/ValueError when it does not parse."""
    if kind == "keyword":
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        return str(value).lower() if isinstance(value, bool) else str(value)
    if kind == "keywords":
        if isinstance(value, str):  # a declared keywords field: "a|b" or "a, b"
            parts = value.split("|") if "|" in value else value.split(",")
            return [p.strip() for p in parts if p.strip()]
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            return [str(v) for v in value]
        raise TypeError("not a list of keywords")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("not a number")
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not whole")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not finite")
        return number
    if kind == "datetime":
        if not isinstance(value, str) or not re.match(r"\d{4}-\d\d-\d\d", value.strip()):
            raise ValueError("not an ISO 8601 date")
        return datetime.fromisoformat(value.strip()).isoformat()
    if kind == "geo":
        return geo_point(value)
    raise ValueError(f"unknown field type {kind!r}")


def geo_point(value: Any) -> dict[str, float]:
    """``{"lat", "lon"}`` (``lng`` too), ``[lat, lon]`` or ``"lat,lon"`` -> a checked point."""
    if isinstance(value, dict):
        lat, lon = value["lat"], value.get("lon", value.get("lng"))
    elif isinstance(value, list | tuple) and len(value) == 2:
        lat, lon = value
    elif isinstance(value, str) and value.count(",") == 1:
        lat, lon = value.split(",")
    else:
        raise TypeError("not a point")
    if isinstance(lat, bool) or isinstance(lon, bool) or lon is None:
        raise TypeError("not a point")
    point = {"lat": float(lat), "lon": float(lon)}
    if not (-90 <= point["lat"] <= 90 and -180 <= point["lon"] <= 180):
        raise ValueError("outside -90..90, -180..180")
    return point


# --- where values come from -----------------------------------------------------------------
def source_fields(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata fields among a source item's extra values (captions left out).

    An empty value (a blank CSV cell, null) is a missing one; ``album`` "" is the source root.
    """
    return {
        str(k): v
        for k, v in extra.items()
        if k not in NOT_FIELDS and v is not None and (v != "" or k == "album")
    }
