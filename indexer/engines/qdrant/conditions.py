"""Metadata in Qdrant payloads, and search conditions as Qdrant filters (both back ends).

Each point's payload holds the image's metadata record under ``meta``, one key per field, in
the form conditions compare (:func:`indexer.fields.where.comparable`): keywords as text,
``keywords`` as a list of texts, ``integer``, ``float`` and ``datetime`` as float64 numbers
(datetimes as UTC epoch seconds, so a range is the same float comparison the reference makes;
a value without an offset is UTC), ``geo`` as Qdrant's ``{"lon", "lat"}``. A payload index per
registry field (:data:`SCHEMA`: keyword, float or geo) lets Qdrant plan the filter.

A search's filter (:func:`build_filter`) is one Qdrant ``Filter`` whose ``must`` holds the word
filter's conditions (the ``words`` payload, :mod:`indexer.filters`) and one condition per
metadata condition: ``in`` on text is ``MatchAny``; ``in`` on numbers is a nested ``should`` of
one-value ranges; ranges are float ranges; ``near`` is ``GeoRadius`` in meters (Qdrant's
haversine uses the same mean Earth radius as :mod:`indexer.fields.where`). A point without the
field fails its condition, as in :meth:`indexer.fields.where.Where.matches`. Qdrant Edge and
qdrant-client spell the same models with different constructors; :class:`Builders` hides that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.fields.where import Condition, Where, comparable
from indexer.filters import WordFilter, active
from indexer.metadata import FieldRegistry

META = "meta"  # payload: the image's metadata record, in comparable form
WORDS = "words"  # payload: strong words (vocabulary indices)
SCHEMA = {  # field type -> payload index kind
    "keyword": "keyword",
    "keywords": "keyword",
    "integer": "float",
    "float": "float",
    "datetime": "float",
    "geo": "geo",
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def meta_key(field: str) -> str:
    """The payload path of a metadata field (quoted when the name is not a plain word)."""
    if _PLAIN_KEY.fullmatch(field):
        return f"{META}.{field}"
    if '"' in field:
        raise ValueError(f"field name {field!r}: a double quote cannot be a Qdrant payload key")
    return f'{META}."{field}"'


def meta_payload(record: Mapping[str, Any], registry: FieldRegistry) -> dict[str, Any]:
    """The ``meta`` payload of one metadata record (fields outside ``registry`` left out)."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        if value is None or name not in registry:
            continue
        kind = registry.type_of(name)
        if kind == "geo":
            out[name] = {"lon": float(value["lon"]), "lat": float(value["lat"])}
        elif kind == "keywords":
            out[name] = [str(v) for v in value]
        else:
            out[name] = comparable(kind, value)
    return out


def meta_payloads(
    records: Sequence[Mapping[str, Any] | None] | None, registry: FieldRegistry | None, count: int
) -> list[dict[str, Any] | None] | None:
    """The ``meta`` payloads of ``count`` images' records (None: no record); None for none."""
    if records is None:
        return None
    if len(records) != count:
        raise ValueError(f"{len(records)} metadata records for {count} images")
    if registry is None:
        raise ValueError("metadata records need their field types: call declare_fields first")
    return [meta_payload(r, registry) if r is not None else None for r in records]


@dataclass(frozen=True)
class Builders:
    """Constructors of one back end's filter models, called with keyword arguments."""

    field: Callable[..., Any]  # (key, match=|range=|geo_radius=)
    match_value: Callable[[Any], Any]
    match_any: Callable[[list[Any]], Any]
    range: Callable[..., Any]  # (gte, gt, lte, lt)
    geo_radius: Callable[[float, float, float], Any]  # (lat, lon, meters)
    filter: Callable[..., Any]  # (must, should, must_not)


def build_filter(make: Builders, filters: WordFilter | None, where: Where | None) -> Any:
    """The Qdrant filter of word filters AND metadata conditions; None when there is neither."""
    must: list[Any] = []
    must_not = None
    if active(filters):
        assert filters is not None
        must += [make.field(WORDS, match=make.match_value(w)) for w in sorted(filters.require)]
        if filters.exclude:
            must_not = [make.field(WORDS, match=make.match_any(sorted(filters.exclude)))]
    if where is not None:
        must += [_condition(make, c) for c in where.conditions]
    if not must and not must_not:
        return None
    return make.filter(must=must or None, should=None, must_not=must_not)


def _condition(make: Builders, c: Condition) -> Any:
    key = meta_key(c.field)
    if c.op == "near":
        assert c.point is not None
        return make.field(key, geo_radius=make.geo_radius(c.point[0], c.point[1], c.km * 1000.0))
    if c.op == "in" and c.type in ("keyword", "keywords"):
        return make.field(key, match=make.match_any([str(v) for v in c.values]))
    if c.op == "in":  # numbers: any of the one-value ranges
        equal = [make.field(key, range=make.range(gte=v, lte=v)) for v in c.values]
        return make.filter(must=None, should=equal, must_not=None)
    low = {"gte" if c.low_inclusive else "gt": c.low} if c.low is not None else {}
    high = {"lte" if c.high_inclusive else "lt": c.high} if c.high is not None else {}
    return make.field(key, range=make.range(**low, **high))


def edge_builders(qe: Any) -> Builders:
    """Qdrant Edge's (``qdrant_edge``) filter models."""
    return Builders(
        field=lambda key, **kw: qe.FieldCondition(key, **kw),
        match_value=qe.MatchValue,
        match_any=qe.MatchAny,
        range=qe.RangeFloat,
        geo_radius=lambda lat, lon, m: qe.GeoRadius(qe.GeoPoint(lon, lat), m),
        filter=qe.Filter,
    )


def client_builders(models: Any) -> Builders:
    """qdrant-client's (``qdrant_client.models``) filter models."""
    return Builders(
        field=lambda key, **kw: models.FieldCondition(key=key, **kw),
        match_value=lambda v: models.MatchValue(value=v),
        match_any=lambda vs: models.MatchAny(any=vs),
        range=models.Range,
        geo_radius=lambda lat, lon, m: models.GeoRadius(
            center=models.GeoPoint(lon=lon, lat=lat), radius=m
        ),
        filter=models.Filter,
    )
