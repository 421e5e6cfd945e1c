"""Metadata conditions on a search (``where``), checked against the field registry.

A ``where`` object maps fields to conditions, all ANDed (and ANDed with the word filters):

- a value: equality (``{"album": "Trip"}``); for a ``keywords`` field, "contains";
- ``{"in": [..]}``: any of the values (for ``keywords``: contains any);
- ``{"gte": .., "lte": .., "gt": .., "lt": ..}``: a range, for ``integer``, ``float`` and
  ``datetime`` fields (ISO 8601 text; a date is its midnight);
- ``{"near": {"lat": .., "lon": .., "km": ..}}``: within ``km`` of a point, for ``geo`` fields
  (great-circle distance on a sphere of radius 6371.0088 km, the IUGG mean radius).

Datetimes compare as instants: a value with an offset is converted to UTC, one without an
offset is read as UTC (stored values keep what the source wrote; :mod:`indexer.metadata`).
:func:`parse_where` checks every condition against the registry and raises :class:`WhereError`
naming the field (the service answers 422 with it); :meth:`Where.matches` is the reference
implementation on plain records, which every engine's filtered search is tested against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from indexer.metadata import COLLECTION, FieldRegistry, geo_point

EARTH_KM = 6371.0088
RANGE_OPS = ("gte", "gt", "lte", "lt")
ORDERED = ("integer", "float", "datetime")
SORTABLE = ("keyword", "integer", "float", "datetime")


class WhereError(ValueError):
    """A condition that cannot be applied; ``field`` names it (one line)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Condition:
    """One field's condition, values in comparable form (see :func:`comparable`)."""

    field: str
    type: str
    op: str  # "in" (equality is "in" one value) | "range" | "near"
    values: tuple[Any, ...] = ()
    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True
    point: tuple[float, float] | None = None  # (lat, lon)
    km: float = 0.0

    def accepts(self, value: Any) -> bool:
        """Whether a stored value (None: missing) passes; the reference semantics."""
        if value is None:
            return False
        if self.op == "in":
            if self.type == "keywords":
                return any(v in self.values for v in value)
            return comparable(self.type, value) in self.values
        if self.op == "range":
            return self.in_range(comparable(self.type, value))
        lat, lon = value["lat"], value["lon"]
        assert self.point is not None
        return distance_km(self.point[0], self.point[1], lat, lon) <= self.km

    def in_range(self, number: float) -> bool:
        if self.low is not None and not (
            number >= self.low if self.low_inclusive else number > self.low
        ):
            return False
        return self.high is None or (
            number <= self.high if self.high_inclusive else number < self.high
        )


@dataclass(frozen=True)
class Where:
    """Conditions ANDed; empty allows every image."""

    conditions: tuple[Condition, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.conditions

    def key(self) -> str:
        """A canonical text of the conditions (cache key)."""
        return json.dumps([c.__dict__ for c in self.conditions], sort_keys=True, default=str)

    def matches(self, record: Mapping[str, Any]) -> bool:
        return all(c.accepts(record.get(c.field)) for c in self.conditions)

    def also(self, condition: Condition) -> Where:
        return Where((*self.conditions, condition))


def collection_condition(collections: list[str] | tuple[str, ...]) -> Condition:
    """Only the images of ``collections`` (what a collection-scoped key adds to every search)."""
    return Condition(COLLECTION, "keyword", "in", tuple(sorted(collections)))


def comparable(kind: str, value: Any) -> Any:
    """A stored value as conditions compare it: datetimes as UTC epoch seconds, numbers as float,
    keywords as text."""
    if kind == "datetime":
        return epoch_seconds(value)
    if kind in ("integer", "float"):
        return float(value)
    return value


def epoch_seconds(text: str) -> float:
    """An ISO 8601 datetime (or date) as UTC epoch seconds; no offset means UTC."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def parse_where(where: Mapping[str, Any] | None, registry: FieldRegistry) -> Where:
    """``where`` as :class:`Where`; :class:`WhereError` names the first field that is wrong."""
    if not where:
        return Where()
    if not isinstance(where, Mapping):
        raise WhereError("where", "where must be an object of field conditions")
    conditions = []
    for name, spec in where.items():
        if name not in registry:
            known = ", ".join(sorted(registry.fields))
            raise WhereError(name, f"where: unknown field {name!r}; this index has: {known}")
        conditions.append(_condition(name, registry.type_of(name), spec))
    return Where(tuple(conditions))


def _condition(name: str, kind: str, spec: Any) -> Condition:
    if isinstance(spec, Mapping):
        ops = set(spec)
        if ops == {"in"}:
            values = spec["in"]
            if not isinstance(values, list) or not values:
                raise WhereError(name, f"where.{name}.in must be a non-empty list of values")
            return Condition(name, kind, "in", _values(name, kind, values))
        if ops == {"near"}:
            return _near(name, kind, spec["near"])
        if ops and ops <= set(RANGE_OPS):
            return _range(name, kind, spec)
        raise WhereError(
            name,
            f"where.{name}: {sorted(ops)} is no condition; use a value, {{'in': [...]}}, "
            "{'gte'|'gt'|'lte'|'lt': ...} or {'near': {'lat', 'lon', 'km'}}",
        )
    return Condition(name, kind, "in", _values(name, kind, [spec]))


def _values(name: str, kind: str, values: list[Any]) -> tuple[Any, ...]:
    if kind == "geo":
        raise WhereError(name, f"where.{name} is a geo point: use {{'near': {{lat, lon, km}}}}")
    out: list[Any] = []
    for value in values:
        if kind in ("keyword", "keywords"):
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise WhereError(name, f"where.{name}: {value!r} is not a keyword (text)")
            out.append(str(value))
        else:
            out.append(_ordered_value(name, kind, value))
    return tuple(sorted(set(out)))


def _ordered_value(name: str, kind: str, value: Any) -> float:
    if kind == "datetime":
        if not isinstance(value, str):
            raise WhereError(name, f"where.{name}: {value!r} is not an ISO 8601 date or datetime")
        try:
            return epoch_seconds(value)
        except ValueError:
            raise WhereError(
                name, f"where.{name}: {value!r} is not an ISO 8601 date or datetime"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WhereError(name, f"where.{name}: {value!r} is not a number ({kind} field)")
    return float(value)


def _range(name: str, kind: str, spec: Mapping[str, Any]) -> Condition:
    if kind not in ORDERED:
        raise WhereError(
            name, f"where.{name} is a {kind} field: ranges apply to {', '.join(ORDERED)} fields"
        )
    if ("gt" in spec and "gte" in spec) or ("lt" in spec and "lte" in spec):
        raise WhereError(name, f"where.{name}: give one lower bound and one upper bound at most")
    bounds = {op: _ordered_value(name, kind, v) for op, v in spec.items()}
    low = bounds.get("gte", bounds.get("gt"))
    high = bounds.get("lte", bounds.get("lt"))
    return Condition(name, kind, "range", (), low, "gt" not in bounds, high, "lt" not in bounds)


def _near(name: str, kind: str, spec: Any) -> Condition:
    if kind != "geo":
        raise WhereError(name, f"where.{name} is a {kind} field: 'near' applies to geo fields")
    try:
        point = geo_point({k: spec[k] for k in ("lat", "lon")})
        km = float(spec["km"])
    except (KeyError, TypeError, ValueError):
        raise WhereError(
            name, f"where.{name}.near must be {{'lat': .., 'lon': .., 'km': ..}} (degrees, km)"
        ) from None
    if not math.isfinite(km) or km < 0:
        raise WhereError(name, f"where.{name}.near.km must be a distance >= 0")
    return Condition(name, kind, "near", point=(point["lat"], point["lon"]), km=km)


def check_sort(sort: str, registry: FieldRegistry) -> tuple[str, bool] | None:
    """``"relevance"`` -> None; ``"field"`` / ``"-field"`` -> (field, descending)."""
    if sort == "relevance":
        return None
    name = sort[1:] if sort.startswith("-") else sort
    if name not in registry:
        raise WhereError("sort", f"sort: unknown field {name!r}; use 'relevance' or a field")
    kind = registry.type_of(name)
    if kind not in SORTABLE:
        raise WhereError(
            "sort", f"sort: {name!r} is a {kind} field; sort by one of type {', '.join(SORTABLE)}"
        )
    return name, sort.startswith("-")


FACET_PARTS = ("year", "month")


def check_facets(facets: list[str], registry: FieldRegistry) -> list[tuple[str, str, str]]:
    """Facet names -> (name, field, part): keyword fields, or ``datetime:year|month``."""
    out = []
    for facet in dict.fromkeys(facets):
        name, _, part = facet.partition(":")
        if name not in registry:
            raise WhereError("facets", f"facets: unknown field {name!r}")
        kind = registry.type_of(name)
        if part:
            if kind != "datetime" or part not in FACET_PARTS:
                raise WhereError(
                    "facets", f"facets: {facet!r}: only datetime fields take ':year' or ':month'"
                )
        elif kind not in ("keyword", "keywords"):
            raise WhereError(
                "facets",
                f"facets: {name!r} is a {kind} field; facet keyword fields"
                + (f" or {name}:year / {name}:month" if kind == "datetime" else ""),
            )
        out.append((facet, name, part))
    return out


def facet_value(part: str, value: Any) -> list[str]:
    """The facet buckets a stored value falls in (reference for the columns' counts); a
    datetime's year or month is the one written in it (the photo's local date)."""
    if value is None:
        return []
    if part:  # the date as written (a photo's local date), not its UTC instant
        return [value[:4] if part == "year" else value[:7]]
    return list(dict.fromkeys(value)) if isinstance(value, list) else [value]
