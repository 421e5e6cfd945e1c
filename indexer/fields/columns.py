"""The metadata of one index version as columns: filters, sort keys and facet counts.

Every index version carries its images' metadata records (:mod:`indexer.metadata`) in a
``fields/`` folder beside the engine's files, written when the version is published, so the
version is self-contained: the hits, filters and facets of a search all see the metadata the
version was built with, whichever engine serves it and whatever the corpus store holds since.

Rows are the images in the order of their UTF-8 ids (``ids.npy``, a sorted numpy bytes array),
so an engine finds its images' rows with one ``searchsorted`` (:meth:`FieldColumns.positions`).
A column per field, by type, all ``.npy`` files opened memory-mapped:

- ``keyword``: ``codes`` int32 per row (-1: missing) into ``dictionary`` (the sorted distinct
  values, UTF-8 bytes), so equality is a code lookup and sorting by code is sorting by value;
- ``keywords``: ``ptr`` int64 [rows + 1] and ``codes`` int32, one list per row, same dictionary;
- ``integer``, ``float``, ``datetime``: ``values`` float64 (NaN: missing); datetimes as UTC epoch
  seconds (:func:`indexer.fields.where.epoch_seconds`) and their written date as ``day`` codes
  (``YYYY-MM-DD`` into a dictionary) for year and month facets;
- ``geo``: ``lat`` and ``lon`` float64 (NaN: missing).

The records themselves (for hits) are one JSON text per row (``records.bin``, ``records_ptr.npy``).
Why by hand rather than a database: a filter must yield a boolean mask over a million rows in a
few milliseconds inside the engine's search (numpy on memory-mapped arrays does), and SQLite
would answer row by row.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.atomic import atomic_write_json
from indexer.fields.where import (
    EARTH_KM,
    Condition,
    Where,
    comparable,
)
from indexer.metadata import FieldRegistry

FORMAT = 1
INFO = "columns.json"
_MASKS = 32  # masks of recent conditions kept per version (a byte per row each)


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    return np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_)


class FieldColumns:
    """Columns of one index version (see the module docstring); thread-safe for reading."""

    def __init__(
        self,
        registry: FieldRegistry,
        ids: np.ndarray,
        arrays: dict[str, np.ndarray],
        names: dict[str, str],
    ):
        self.registry = registry
        self.ids = ids
        self.arrays = arrays  # "<file stem>" -> array
        self.names = names  # field -> file stem prefix
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        # an engine's id array (kept referenced, so its id() is not reused) -> its rows here
        self._rows: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        # (conditions, id of an engine's id array) -> (that array, which of its ids pass)
        self._allowed: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._allowed_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    # --- building and files -------------------------------------------------------------------
    @classmethod
    def build(
        cls, ids: Sequence[str], records: Sequence[Mapping[str, Any]], registry: FieldRegistry
    ) -> FieldColumns:
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
        return cls(registry, encoded, arrays, names)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "ids.npy", self.ids)
        for stem, array in self.arrays.items():
            np.save(directory / f"{stem}.npy", array)
        info = {
            "format": FORMAT,
            "count": len(self.ids),
            "registry": self.registry.to_json(),
            "fields": self.names,
            "arrays": sorted(self.arrays),
        }
        atomic_write_json(directory / INFO, info)

    @classmethod
    def open(cls, directory: str | Path, mmap: bool = True) -> FieldColumns:
        directory = Path(directory)
        info = json.loads((directory / INFO).read_text())
        if info.get("format") != FORMAT:
            raise ValueError(
                f"{directory}: metadata columns of format {info.get('format')!r}, this code "
                f"reads {FORMAT}; rebuild the index from the store (`lexvla index reindex`)"
            )
        mode: Literal["r"] | None = "r" if mmap else None
        arrays = {s: np.load(directory / f"{s}.npy", mmap_mode=mode) for s in info["arrays"]}
        ids = np.load(directory / "ids.npy", mmap_mode=mode)
        return cls(FieldRegistry.from_json(info["registry"]), ids, arrays, info["fields"])

    # --- lookups ------------------------------------------------------------------------------
    def positions(self, ids: np.ndarray | Sequence[str]) -> np.ndarray:
        """Row of each id (a bytes array or strings); -1 for ids without a record."""
        keys = ids if isinstance(ids, np.ndarray) else encode_ids(list(ids))
        if len(self.ids) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.searchsorted(self.ids, keys).astype(np.int64)
        found = at < len(self.ids)
        found[found] = self.ids[at[found]] == keys[found]
        return np.where(found, at, -1)

    def id_texts(self, rows: np.ndarray) -> list[str]:
        """The ids of ``rows``."""
        return [bytes(i).decode("utf-8") for i in self.ids[np.asarray(rows, dtype=np.int64)]]

    def records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id -> record of the ids that have one."""
        ptr, blob = self.arrays["records_ptr"], self.arrays["records"]
        out = {}
        for image_id, row in zip(ids, self.positions(ids).tolist(), strict=True):
            if row >= 0:
                out[image_id] = json.loads(bytes(blob[ptr[row] : ptr[row + 1]]))
        return out

    def allowed(self, where: Where, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (an engine's bytes array of ids, never changed once made: its rows
        here, and the answer for recent conditions, are cached; the answer is read-only) pass
        ``where``; ids without a record pass only an empty ``where``."""
        if where.empty:
            return np.ones(len(ids), dtype=bool)
        key = (where.key(), id(ids))
        with self._lock:
            cached = self._allowed.get(key)
            if cached is not None and cached[0] is ids:
                self._allowed.move_to_end(key)
                return cached[1]
        rows = self.rows_of_array(ids)
        passing = self.mask(where)[np.maximum(rows, 0)] & (rows >= 0)
        passing.flags.writeable = False  # shared by the searches that ask again
        with self._lock:  # as many bytes as the masks' cache holds, at most
            old = self._allowed.pop(key, None)
            self._allowed_bytes += len(passing) - (0 if old is None else len(old[1]))
            self._allowed[key] = (ids, passing)
            while self._allowed_bytes > _MASKS * max(len(self.ids), 1) and len(self._allowed) > 1:
                self._allowed_bytes -= len(self._allowed.popitem(last=False)[1][1])
        return passing

    def rows_of_array(self, ids: np.ndarray) -> np.ndarray:
        """:meth:`positions` of an engine's id array that never changes (cached by identity)."""
        key = id(ids)
        with self._lock:
            cached = self._rows.get(key)
            if cached is not None and cached[0] is ids:
                self._rows.move_to_end(key)
                return cached[1]
        rows = self.positions(ids)
        with self._lock:
            self._rows[key] = (ids, rows)
            while len(self._rows) > 4096:
                self._rows.popitem(last=False)
        return rows

    def mask(self, where: Where) -> np.ndarray:
        """Rows passing ``where`` (cached for the most recent conditions)."""
        key = where.key()
        with self._lock:
            cached = self._masks.get(key)
            if cached is not None:
                self._masks.move_to_end(key)
                return cached
        mask = np.ones(len(self.ids), dtype=bool)
        for condition in where.conditions:
            mask &= self._condition_mask(condition)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > _MASKS:
                self._masks.popitem(last=False)
        return mask

    def _condition_mask(self, c: Condition) -> np.ndarray:
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

    # --- sort and facets ----------------------------------------------------------------------
    def sort_keys(self, field: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, missing) of ``rows`` for ordering by ``field`` (keywords by their text's code)."""
        stem = self.names.get(field)
        if stem is None:
            return np.zeros(len(rows)), np.ones(len(rows), dtype=bool)
        kind = self.registry.type_of(field)
        if kind == "keyword":
            codes = np.asarray(self.arrays[f"{stem}_codes"])[rows]
            return codes.astype(np.float64), codes < 0
        values = np.asarray(self.arrays[f"{stem}_values"])[rows]
        return np.nan_to_num(values), np.isnan(values)

    def facet_counts(self, field: str, part: str, rows: np.ndarray) -> dict[str, int]:
        """Value -> number of ``rows`` with it (``part``: ``year``/``month`` of a datetime),
        largest count first, then by value."""
        stem = self.names.get(field)
        if stem is None:
            return {}
        if part:
            codes, dictionary = np.asarray(self.arrays[f"{stem}_day"])[rows], f"{stem}_daydict"
        elif self.registry.type_of(field) == "keywords":
            ptr, flat = self.arrays[f"{stem}_ptr"], self.arrays[f"{stem}_codes"]
            chosen = np.zeros(len(self.ids), dtype=bool)
            chosen[rows] = True
            codes, dictionary = np.asarray(flat)[np.repeat(chosen, np.diff(ptr))], f"{stem}_dict"
        else:
            codes, dictionary = np.asarray(self.arrays[f"{stem}_codes"])[rows], f"{stem}_dict"
        values = self.arrays[dictionary]
        tally = np.bincount(codes[codes >= 0], minlength=len(values))
        width = 4 if part == "year" else 7 if part == "month" else None
        counts: Counter[str] = Counter()
        for code in np.flatnonzero(tally).tolist():
            text = bytes(values[code]).decode("utf-8")
            counts[text[:width] if width else text] += int(tally[code])
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


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
