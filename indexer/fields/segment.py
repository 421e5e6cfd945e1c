"""One segment of an index version's metadata columns: a set of images, a column per field.

Rows are the segment's images in the order of their UTF-8 ids (``ids.npy``, a sorted numpy bytes
array), so its rows of a set of ids are one ``searchsorted`` away (:meth:`Segment.positions`).
A column per field, by type, all ``.npy`` files opened memory-mapped:

- ``keyword``: ``codes`` int32 per row (-1: missing) into ``dictionary`` (the sorted distinct
  values, UTF-8 bytes), so equality is a code lookup and sorting by code is sorting by value;
- ``keywords``: ``ptr`` int64 [rows + 1] and ``codes`` int32, one list per row, same dictionary;
- ``integer``, ``float``, ``datetime``: ``values`` float64 (NaN: missing); datetimes as UTC epoch
  seconds (:func:`indexer.fields.where.epoch_seconds`) and their written date as ``day`` codes
  (``YYYY-MM-DD`` into a dictionary) for year and month facets;
- ``geo``: ``lat`` and ``lon`` float64 (NaN: missing).

Only the fields some row has get a column. The records themselves (for hits) are one JSON text
per row (``records.npy`` bytes, ``records_ptr.npy`` offsets). A segment is never changed once
made: one opened from a folder and saved into another is hard-linked there (:meth:`Segment.save`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.fields.where import EARTH_KM, Condition, comparable
from indexer.metadata import FieldRegistry


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    return np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_)


class Segment:
    """Columns of a set of images (see the module docstring); read-only."""

    def __init__(
        self,
        ids: np.ndarray,
        arrays: dict[str, np.ndarray],
        names: dict[str, str],
        directory: Path | None = None,
    ):
        self.ids = ids
        self.arrays = arrays  # "<file stem>" -> array
        self.names = names  # field -> file stem prefix
        self.directory = directory  # the folder its files are in (None: made in memory)

    def __len__(self) -> int:
        return len(self.ids)

    # --- building and files -------------------------------------------------------------------
    @classmethod
    def build(
        cls, ids: Sequence[str], records: Sequence[Mapping[str, Any]], registry: FieldRegistry
    ) -> Segment:
        """Columns of ``records[i]`` (the record of image ``ids[i]``), typed by ``registry``."""
        if len(ids) != len(records):
            raise ValueError(f"{len(ids)} ids for {len(records)} records")
        encoded = encode_ids(ids)
        order = np.argsort(encoded, kind="stable")
        encoded = encoded[order]
        if len(encoded) > 1 and bool((encoded[1:] == encoded[:-1]).any()):
            raise ValueError("image ids must be distinct")
        rows = [records[i] for i in order.tolist()]
        arrays: dict[str, np.ndarray] = {}
        names: dict[str, str] = {}
        used = sorted({name for r in rows for name in r} & set(registry.fields))
        for n, name in enumerate(used):
            stem = names[name] = f"f{n}"
            values = [r.get(name) for r in rows]
            arrays.update(_column(stem, registry.type_of(name), values))
        texts = [json.dumps(r, ensure_ascii=False, sort_keys=True).encode() for r in rows]
        ptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=ptr[1:])
        arrays["records_ptr"] = ptr
        arrays["records"] = np.frombuffer(b"".join(texts), dtype=np.uint8)
        return cls(encoded, arrays, names)

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the files into ``directory`` (hard links to the files this segment was opened
        from, when it was); returns what :meth:`open` needs."""
        directory.mkdir(parents=True, exist_ok=True)
        for stem, array in [("ids", self.ids), *self.arrays.items()]:
            target = directory / f"{stem}.npy"
            if self.directory is not None:
                try:
                    os.link(self.directory / f"{stem}.npy", target)
                    continue
                except OSError:  # no hard links there, or the file is gone: write the array
                    pass
            np.save(target, array)
        return {"count": len(self.ids), "fields": self.names, "arrays": sorted(self.arrays)}

    @classmethod
    def open(cls, directory: Path, info: Mapping[str, Any], mmap: bool = True) -> Segment:
        mode: Literal["r"] | None = "r" if mmap else None
        arrays = {s: np.load(directory / f"{s}.npy", mmap_mode=mode) for s in info["arrays"]}
        ids = np.load(directory / "ids.npy", mmap_mode=mode)
        return cls(ids, arrays, dict(info["fields"]), directory)

    # --- lookups ------------------------------------------------------------------------------
    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Row of each id (a bytes array); -1 for ids not here."""
        if len(self.ids) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.searchsorted(self.ids, keys).astype(np.int64)
        found = at < len(self.ids)
        found[found] = self.ids[at[found]] == keys[found]
        return np.where(found, at, -1)

    def id_texts(self, rows: np.ndarray) -> list[str]:
        return [bytes(i).decode("utf-8") for i in self.ids[np.asarray(rows, dtype=np.int64)]]

    def record(self, row: int) -> dict[str, Any]:
        ptr, blob = self.arrays["records_ptr"], self.arrays["records"]
        record: dict[str, Any] = json.loads(bytes(blob[ptr[row] : ptr[row + 1]]))
        return record

    def condition_mask(self, c: Condition) -> np.ndarray:
        """Rows passing one condition."""
        n = len(self.ids)
        stem = self.names.get(c.field)
        if stem is None:  # no image has this field
            return np.zeros(n, dtype=bool)
        if c.type in ("keyword", "keywords"):
            wanted = _codes_of(self.arrays[f"{stem}_dict"], c.values)
            codes = self.arrays[f"{stem}_codes"]
            hit = np.isin(codes, wanted)
            if c.type == "keyword":
                return hit
            ptr = self.arrays[f"{stem}_ptr"]
            owner = np.repeat(np.arange(n), np.diff(ptr))
            out = np.zeros(n, dtype=bool)
            out[owner[hit]] = True
            return out
        if c.op == "near":
            assert c.point is not None
            lat, lon = self.arrays[f"{stem}_lat"], self.arrays[f"{stem}_lon"]
            return _within(lat, lon, c.point, c.km)
        values = self.arrays[f"{stem}_values"]
        if c.op == "in":
            return np.isin(values, np.asarray(c.values, dtype=np.float64))
        mask = ~np.isnan(values)
        if c.low is not None:
            mask &= values >= c.low if c.low_inclusive else values > c.low
        if c.high is not None:
            mask &= values <= c.high if c.high_inclusive else values < c.high
        return mask

    def sort_key(self, field: str, kind: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, missing) of ``rows``: a keyword's code in this segment's dictionary (-1:
        missing), another field's value."""
        stem = self.names.get(field)
        if stem is None:
            return np.full(len(rows), -1.0), np.ones(len(rows), dtype=bool)
        if kind == "keyword":
            codes = np.asarray(self.arrays[f"{stem}_codes"])[rows]
            return codes.astype(np.float64), codes < 0
        values = np.asarray(self.arrays[f"{stem}_values"])[rows]
        return values, np.isnan(values)

    def dictionary(self, field: str) -> np.ndarray | None:
        """The sorted distinct values of a keyword field here (None: no row has it)."""
        stem = self.names.get(field)
        return None if stem is None else self.arrays[f"{stem}_dict"]

    def facet_tally(self, field: str, kind: str, part: str, rows: np.ndarray) -> Counter[str]:
        """Value -> number of ``rows`` with it (``part``: ``year``/``month`` of a datetime)."""
        stem = self.names.get(field)
        counts: Counter[str] = Counter()
        if stem is None:
            return counts
        if part:
            codes, dictionary = np.asarray(self.arrays[f"{stem}_day"])[rows], f"{stem}_daydict"
        elif kind == "keywords":
            ptr, flat = self.arrays[f"{stem}_ptr"], self.arrays[f"{stem}_codes"]
            chosen = np.zeros(len(self.ids), dtype=bool)
            chosen[rows] = True
            codes, dictionary = np.asarray(flat)[np.repeat(chosen, np.diff(ptr))], f"{stem}_dict"
        else:
            codes, dictionary = np.asarray(self.arrays[f"{stem}_codes"])[rows], f"{stem}_dict"
        values = self.arrays[dictionary]
        tally = np.bincount(codes[codes >= 0], minlength=len(values))
        width = 4 if part == "year" else 7 if part == "month" else None
        for code in np.flatnonzero(tally).tolist():
            text = bytes(values[code]).decode("utf-8")
            counts[text[:width] if width else text] += int(tally[code])
        return counts


def _codes_of(dictionary: np.ndarray, values: tuple[Any, ...]) -> np.ndarray:
    keys = encode_ids([str(v) for v in values])
    if len(dictionary) == 0:
        return np.zeros(0, dtype=np.int32)
    at = np.searchsorted(dictionary, keys)
    ok = at < len(dictionary)
    ok[ok] = dictionary[at[ok]] == keys[ok]
    return at[ok].astype(np.int32)


def _dictionary(values: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    distinct = sorted(set(values), key=lambda v: v.encode("utf-8"))
    return encode_ids(distinct), {v: n for n, v in enumerate(distinct)}


def _column(stem: str, kind: str, values: list[Any]) -> dict[str, np.ndarray]:
    if kind == "keyword":
        dictionary, code = _dictionary([v for v in values if v is not None])
        codes = np.array([code[v] if v is not None else -1 for v in values], dtype=np.int32)
        return {f"{stem}_dict": dictionary, f"{stem}_codes": codes}
    if kind == "keywords":
        lists = [v or [] for v in values]
        dictionary, code = _dictionary([x for v in lists for x in v])
        ptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(v) for v in lists], out=ptr[1:])
        flat = np.array([code[x] for v in lists for x in v], dtype=np.int32)
        return {f"{stem}_dict": dictionary, f"{stem}_ptr": ptr, f"{stem}_codes": flat}
    if kind == "geo":
        lat = np.array([v["lat"] if v else np.nan for v in values], dtype=np.float64)
        lon = np.array([v["lon"] if v else np.nan for v in values], dtype=np.float64)
        return {f"{stem}_lat": lat, f"{stem}_lon": lon}
    numbers = np.array(
        [comparable(kind, v) if v is not None else np.nan for v in values], dtype=np.float64
    )
    out = {f"{stem}_values": numbers}
    if kind == "datetime":  # the written date, for year / month facets
        days = [v[:10] if v is not None else None for v in values]
        dictionary, code = _dictionary([d for d in days if d is not None])
        out[f"{stem}_daydict"] = dictionary
        out[f"{stem}_day"] = np.array(
            [code[d] if d is not None else -1 for d in days], dtype=np.int32
        )
    return out


def _within(lat: np.ndarray, lon: np.ndarray, point: tuple[float, float], km: float) -> np.ndarray:
    p1, p2 = np.radians(point[0]), np.radians(lat)
    dp, dl = p2 - p1, np.radians(lon - point[1])
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    with np.errstate(invalid="ignore"):
        return 2 * EARTH_KM * np.arcsin(np.minimum(1.0, np.sqrt(a))) <= km
