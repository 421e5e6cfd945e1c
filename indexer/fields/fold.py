"""Merging two metadata segments into one with numpy, never a row at a time in Python.

:func:`merge` makes the segment :meth:`Segment.build <indexer.fields.segment.Segment.build>`
would make from the records of some rows of one segment and every row of another (their ids
disjoint): the ids are merged by ``searchsorted``; per-row columns are gathered; keyword
dictionaries are united, codes mapped into the union, and values no row uses any more dropped
(so codes equal a fresh build's); variable-length data (``keywords`` lists, the records' JSON) is
copied as byte ranges, one per run of rows that stay consecutive. A field no row has any more
loses its column, as in a build. The cost is numpy work over the rows plus one slice copy per
run, so replacing a few rows of a large segment is cheap in Python terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from indexer.fields.segment import Segment
from indexer.metadata import FieldRegistry


@dataclass(frozen=True)
class _Plan:
    """Where the kept rows of ``a`` (``a_rows``) and every row of ``b`` go in the merge."""

    a_rows: np.ndarray  # int64, sorted
    to_a: np.ndarray  # destination row of each kept row of a
    to_b: np.ndarray  # destination row of each row of b
    count: int


def merge(a: Segment, keep: np.ndarray, b: Segment, registry: FieldRegistry) -> Segment:
    """One segment of rows ``keep`` (sorted row numbers) of ``a`` and all rows of ``b``;
    ValueError if an id is in both."""
    a_rows = np.asarray(keep, dtype=np.int64)
    a_ids = np.asarray(a.ids)[a_rows]
    b_ids = np.asarray(b.ids)
    to_b = np.searchsorted(a_ids, b_ids).astype(np.int64) + np.arange(len(b_ids))
    count = len(a_rows) + len(b_ids)
    from_b = np.zeros(count, dtype=bool)
    from_b[to_b] = True
    plan = _Plan(a_rows, np.flatnonzero(~from_b), to_b, count)
    ids = np.empty(count, dtype=np.promote_types(a_ids.dtype, b_ids.dtype))
    ids[plan.to_a], ids[plan.to_b] = a_ids, b_ids
    if count > 1 and bool((ids[1:] == ids[:-1]).any()):
        raise ValueError("image ids must be distinct")
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for name in sorted((set(a.names) | set(b.names)) & set(registry.fields)):
        column = _merge_field(plan, _field(a, name), _field(b, name), registry.type_of(name))
        if column is not None:
            stem = names[name] = f"f{len(names)}"
            arrays.update({f"{stem}_{part}": array for part, array in column.items()})
    ptr, blob = _ragged(plan, _part(a, "records"), _part(b, "records"), np.uint8)
    arrays["records_ptr"], arrays["records"] = ptr, blob
    return Segment(ids, arrays, names)


def _field(segment: Segment, name: str) -> dict[str, np.ndarray]:
    """A field's arrays by part (``codes``, ``dict``, ``ptr``, ``values``...); {} if absent."""
    stem = segment.names.get(name)
    if stem is None:
        return {}
    prefix = f"{stem}_"
    return {s[len(prefix) :]: a for s, a in segment.arrays.items() if s.startswith(prefix)}


def _part(segment: Segment, stem: str) -> dict[str, np.ndarray]:
    return {"ptr": segment.arrays[f"{stem}_ptr"], "codes": segment.arrays[stem]}


def _merge_field(
    plan: _Plan, a: dict[str, np.ndarray], b: dict[str, np.ndarray], kind: str
) -> dict[str, np.ndarray] | None:
    """The merged arrays of one field, or None when no merged row has it."""
    if kind == "keyword":
        dictionary, codes = _coded(plan, a, b, "dict", "codes")
        return {"dict": dictionary, "codes": codes} if len(dictionary) else None
    if kind == "keywords":
        union, map_a, map_b = _union(a.get("dict"), b.get("dict"))
        a_lists = {"ptr": a["ptr"], "codes": map_a[np.asarray(a["codes"])]} if a else {}
        b_lists = {"ptr": b["ptr"], "codes": map_b[np.asarray(b["codes"])]} if b else {}
        ptr, flat = _ragged(plan, a_lists, b_lists, np.int32)
        dictionary, flat = _compact(union, flat)
        return {"dict": dictionary, "ptr": ptr, "codes": flat} if len(flat) else None
    if kind == "geo":
        lat, lon = _rows(plan, a.get("lat"), b.get("lat")), _rows(plan, a.get("lon"), b.get("lon"))
        return {"lat": lat, "lon": lon} if not np.isnan(lat).all() else None
    values = _rows(plan, a.get("values"), b.get("values"))
    if np.isnan(values).all():
        return None
    if kind != "datetime":
        return {"values": values}
    days, day_codes = _coded(plan, a, b, "daydict", "day")
    return {"values": values, "daydict": days, "day": day_codes}


def _rows(plan: _Plan, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    """A float64 per-row column (NaN where a side lacks the field)."""
    out = np.full(plan.count, np.nan)
    if a is not None:
        out[plan.to_a] = np.asarray(a)[plan.a_rows]
    if b is not None:
        out[plan.to_b] = b
    return out


def _coded(
    plan: _Plan, a: dict[str, np.ndarray], b: dict[str, np.ndarray], dict_part: str, part: str
) -> tuple[np.ndarray, np.ndarray]:
    """(dictionary, codes) of a per-row dictionary-coded column (-1: missing)."""
    union, map_a, map_b = _union(a.get(dict_part), b.get(dict_part))
    codes = np.full(plan.count, -1, dtype=np.int32)
    for side, mapping, rows, to in (
        (a, map_a, plan.a_rows, plan.to_a),
        (b, map_b, None, plan.to_b),
    ):
        if part in side:
            own = np.asarray(side[part])
            own = own[rows] if rows is not None else own
            codes[to] = np.where(own >= 0, mapping[np.maximum(own, 0)], -1)
    return _compact(union, codes)


def _union(a: np.ndarray | None, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted union of two dictionaries, and each one's codes in it."""
    a = np.zeros(0, dtype="S1") if a is None else np.asarray(a)
    b = np.zeros(0, dtype="S1") if b is None else np.asarray(b)
    union = np.union1d(a, b).astype(np.promote_types(a.dtype, b.dtype))
    map_a = np.searchsorted(union, a).astype(np.int32)
    map_b = np.searchsorted(union, b).astype(np.int32)
    return union, _safe(map_a), _safe(map_b)


def _safe(mapping: np.ndarray) -> np.ndarray:
    """A code map that can be indexed by code 0 even when empty (no row uses it then)."""
    return mapping if len(mapping) else np.zeros(1, dtype=np.int32)


def _compact(dictionary: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dictionary without the values no code uses, and the codes renumbered."""
    used = np.zeros(len(dictionary), dtype=bool)
    used[codes[codes >= 0]] = True
    renumber = (np.cumsum(used) - 1).astype(np.int32)
    codes = np.where(codes >= 0, renumber[np.maximum(codes, 0)] if len(used) else -1, -1)
    return dictionary[used], codes.astype(np.int32)


def _ragged(
    plan: _Plan, a: dict[str, np.ndarray], b: dict[str, np.ndarray], dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """(ptr, flat) of variable-length rows (``ptr`` [rows + 1] into ``codes``); a side without
    them gives empty rows."""
    lengths = np.zeros(plan.count, dtype=np.int64)
    if a:
        lengths[plan.to_a] = np.diff(np.asarray(a["ptr"]))[plan.a_rows]
    if b:
        lengths[plan.to_b] = np.diff(np.asarray(b["ptr"]))
    ptr = np.zeros(plan.count + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    flat: np.ndarray = np.empty(int(ptr[-1]), dtype=dtype)
    for side, rows, to in ((a, plan.a_rows, plan.to_a), (b, np.arange(len(plan.to_b)), plan.to_b)):
        if side:
            src_ptr, src = side["ptr"], side["codes"]
            for first, end, at in _runs(rows, to):
                start, stop = int(src_ptr[first]), int(src_ptr[end])
                flat[ptr[at] : ptr[at] + stop - start] = src[start:stop]
    return ptr, flat


def _runs(rows: np.ndarray, to: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, destination of the first) of each run of rows that are consecutive
    both where they come from and where they go."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(to) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    yield from zip(
        rows[starts].tolist(), (rows[ends - 1] + 1).tolist(), to[starts].tolist(), strict=True
    )
