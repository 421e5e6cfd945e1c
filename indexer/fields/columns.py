"""The metadata of one index version as columns: filters, sort keys and facet counts.

Every index version carries its images' metadata records (:mod:`indexer.metadata`) in a
``fields/`` folder beside the engine's files, written when the version is published, so the
version is self-contained: the hits, filters and facets of a search all see the metadata the
version was built with, whichever engine serves it and whatever the corpus store holds since.

Rows are the images in the order of their UTF-8 ids, so an engine finds its images' rows with a
``searchsorted`` (:meth:`FieldColumns.positions`). Why by hand rather than a database: a filter
must yield a boolean mask over a million rows in a few milliseconds inside the engine's search
(numpy on memory-mapped arrays does), and SQLite would answer row by row.

Segments. The columns are one *base* segment (:mod:`indexer.fields.segment`), optionally with a
*delta* segment (rows added or replaced since the base) and the rows of the base deleted since
(sorted row numbers), so that a single-image write makes its version's columns at the cost of
what changed (:meth:`FieldColumns.changed`): the new version hard-links the base's files, writes
the delta (old delta and new rows merged with numpy, :mod:`indexer.fields.fold`) and the deleted
rows. When the delta and the deleted rows together pass :func:`fold_threshold` of the base, they
are folded into a new base. The delta is written whole by each write, ``d / 2`` rows on average
when it folds at ``d``, and a fold writes the ``n`` rows of the base once every ``d`` writes:
``d / 2 + n / d`` rows a write is least at ``d = sqrt(2 n)``, the threshold (with a floor, so
that small collections fold rarely). Every answer equals that of the columns built from the
live records at once (:meth:`FieldColumns.build`; sort keys give the same order, their numbers
may differ), and a fold's arrays are a build's; a segmented version maps its rows to the two
segments once, when first asked (a few numpy passes over the rows), and masks, sort keys and
facets are numpy work per segment.

``fields/`` holds ``columns.json`` (format, count, the field registry, the corpus store's write
sequence the version reflects, each segment's fields and arrays), ``base/`` (a segment's
``.npy`` files) and, when anything changed since the base, ``change.npz`` (the delta's arrays
and the deleted base rows in one file, read whole: it is small). Format 1 (one segment, its
files beside ``columns.json``) is still read.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_write_json
from indexer.fields.fold import merge
from indexer.fields.segment import Segment, encode_ids
from indexer.fields.where import Where
from indexer.metadata import FieldRegistry

__all__ = ["FieldColumns", "encode_ids", "fold_threshold"]

FORMAT = 2
READABLE = (1, 2)  # 1: a single segment, its files beside columns.json
INFO = "columns.json"
BASE, CHANGE = "base", "change.npz"  # the base's folder; the delta and deleted rows, one file
FOLD_MIN_ROWS = 1024
_MASKS = 32  # masks of recent conditions kept per version (a byte per row each)


def fold_threshold(base_rows: int) -> int:
    """Delta plus deleted rows beyond which a change folds them into a new base."""
    return max(FOLD_MIN_ROWS, math.isqrt(2 * base_rows))


@dataclass(frozen=True)
class _Layout:
    """Where the rows of a segmented version are: rows in id order over both segments."""

    base_live: np.ndarray  # the base's live rows, in order
    base_at: np.ndarray  # the row of each of them here
    delta_at: np.ndarray  # the row of each delta row here
    in_delta: np.ndarray  # bool per row here
    local: np.ndarray  # each row's row in its segment


class FieldColumns:
    """Columns of one index version (see the module docstring); thread-safe for reading."""

    def __init__(
        self,
        registry: FieldRegistry,
        base: Segment,
        delta: Segment | None = None,
        deleted: np.ndarray | None = None,
        sequence: int | None = None,
    ):
        self.registry = registry
        self.base = base
        self.delta = delta if delta is not None and len(delta) else None
        self.deleted = np.zeros(0, np.int64) if deleted is None else np.asarray(deleted, np.int64)
        self.sequence = sequence  # the corpus store's write sequence this reflects (None: unknown)
        self.plain = self.delta is None and len(self.deleted) == 0
        self._count = len(base) - len(self.deleted) + (len(self.delta) if self.delta else 0)
        self._layout: _Layout | None = None
        self._keyword_maps: dict[str, dict[int, np.ndarray]] = {}  # field -> id(segment) -> map
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        # an engine's id array (kept referenced, so its id() is not reused) -> its rows here
        self._rows: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        # (conditions, id of an engine's id array) -> (that array, which of its ids pass)
        self._allowed: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._allowed_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    # --- building and files -------------------------------------------------------------------
    @classmethod
    def build(
        cls, ids: Sequence[str], records: Sequence[Mapping[str, Any]], registry: FieldRegistry
    ) -> FieldColumns:
        """Columns of ``records[i]`` (the record of image ``ids[i]``), typed by ``registry``."""
        return cls(registry, Segment.build(ids, records, registry))

    @classmethod
    def changed(
        cls,
        previous: FieldColumns,
        removed_ids: Sequence[str],
        added_ids: Sequence[str],
        added_records: Sequence[Mapping[str, Any]],
        registry: FieldRegistry,
    ) -> FieldColumns:
        """``previous`` without ``removed_ids`` and with ``added_ids`` (an id already there is
        replaced) having ``added_records``, typed by ``registry`` (which may have grown); the
        sequence is left unknown."""
        gone = encode_ids(sorted(set(removed_ids) | set(added_ids)))
        base, deleted = previous.base, previous.deleted
        at = base.positions(gone)
        deleted = np.union1d(deleted, at[at >= 0]).astype(np.int64)
        delta = previous.delta or Segment.build([], [], registry)
        keep = np.ones(len(delta), dtype=bool)
        at = delta.positions(gone)
        keep[at[at >= 0]] = False
        fresh = Segment.build(added_ids, added_records, registry)
        delta = merge(delta, np.flatnonzero(keep), fresh, registry)
        columns = cls(registry, base, delta, deleted)
        return (
            columns.folded() if len(delta) + len(deleted) > fold_threshold(len(base)) else columns
        )

    def folded(self) -> FieldColumns:
        """The same columns as one base segment (delta and deleted rows folded in), or self."""
        if self.plain:
            return self
        live = np.ones(len(self.base), dtype=bool)
        live[self.deleted] = False
        delta = self.delta or Segment.build([], [], self.registry)
        base = merge(self.base, np.flatnonzero(live), delta, self.registry)
        return FieldColumns(self.registry, base, sequence=self.sequence)

    def save(self, directory: str | Path) -> None:
        """Write into ``directory``; the files of a segment opened from another version's
        folder are hard-linked from there, never written again."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "format": FORMAT,
            "count": len(self),
            "registry": self.registry.to_json(),
            "sequence": self.sequence,
            BASE: self.base.save(directory / BASE),
        }
        if not self.plain:  # small by construction: one file, read whole
            delta = self.delta or Segment.build([], [], self.registry)
            packed: dict[str, Any] = {"ids": delta.ids, "deleted": self.deleted, **delta.arrays}
            with open(directory / CHANGE, "wb") as f:
                np.savez(f, **packed)
            info["change"] = {"fields": delta.names, "arrays": sorted(delta.arrays)}
        atomic_write_json(directory / INFO, info)

    def moved(self, directory: str | Path) -> None:
        """The folder this was saved into is now ``directory`` (a published version's
        ``fields/``): the next version made from this one links its base from there."""
        self.base.directory = Path(directory) / BASE

    @classmethod
    def open(cls, directory: str | Path, mmap: bool = True) -> FieldColumns:
        directory = Path(directory)
        info = json.loads((directory / INFO).read_text())
        if info.get("format") not in READABLE:
            raise ValueError(
                f"{directory}: metadata columns of format {info.get('format')!r}, this code "
                f"reads {' and '.join(map(str, READABLE))}; rebuild the index from the store "
                "(`lexvla index reindex`)"
            )
        registry = FieldRegistry.from_json(info["registry"])
        if info["format"] == 1:
            return cls(registry, Segment.open(directory, info, mmap))
        base = Segment.open(directory / BASE, info[BASE], mmap)
        delta, deleted = None, None
        if "change" in info:
            with np.load(directory / CHANGE) as packed:
                arrays = {s: packed[s] for s in info["change"]["arrays"]}
                delta = Segment(packed["ids"], arrays, dict(info["change"]["fields"]))
                deleted = packed["deleted"]
        return cls(registry, base, delta, deleted, info.get("sequence"))

    # --- lookups ------------------------------------------------------------------------------
    def positions(self, ids: np.ndarray | Sequence[str]) -> np.ndarray:
        """Row of each id (a bytes array or strings); -1 for ids without a record."""
        keys = ids if isinstance(ids, np.ndarray) else encode_ids(list(ids))
        if self.plain:
            return self.base.positions(keys)
        layout = self.layout()
        rows = self._base_rows(keys)  # live base rows: found among base_live
        at = np.minimum(np.searchsorted(layout.base_live, rows), len(layout.base_at) - 1)
        out = np.where(rows >= 0, layout.base_at[at] if len(layout.base_at) else -1, -1)
        if self.delta is not None:
            at = self.delta.positions(keys)
            out = np.where(at >= 0, layout.delta_at[np.maximum(at, 0)], out)
        return out.astype(np.int64)

    def id_texts(self, rows: np.ndarray) -> list[str]:
        """The ids of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.plain:
            return self.base.id_texts(rows)
        out = np.empty(len(rows), dtype=object)
        for segment, chosen, local in self._split(rows):
            out[chosen] = np.array(segment.id_texts(local), dtype=object)
        return list(out)

    def records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id -> record of the ids that have one."""
        keys = encode_ids(list(ids))
        at = self._base_rows(keys)
        in_delta = self.delta.positions(keys) if self.delta is not None else np.full(len(ids), -1)
        out = {}
        for image_id, row, row_d in zip(ids, at.tolist(), in_delta.tolist(), strict=True):
            if row_d >= 0:
                assert self.delta is not None
                out[image_id] = self.delta.record(row_d)
            elif row >= 0:
                out[image_id] = self.base.record(row)
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
            while self._allowed_bytes > _MASKS * max(len(self), 1) and len(self._allowed) > 1:
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
        mask = _segment_mask(self.base, where)
        if not self.plain:
            layout = self.layout()
            spread = np.zeros(len(self), dtype=bool)
            spread[layout.base_at] = mask[layout.base_live]
            if self.delta is not None:
                spread[layout.delta_at] = _segment_mask(self.delta, where)
            mask = spread
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > _MASKS:
                self._masks.popitem(last=False)
        return mask

    # --- sort and facets ----------------------------------------------------------------------
    def sort_keys(self, field: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, missing) of ``rows`` for ordering by ``field`` (keywords by their text's rank
        among the version's values; 0 where missing)."""
        rows = np.asarray(rows, dtype=np.int64)
        kind = self.registry.type_of(field) if field in self.registry else "keyword"
        key, missing = np.zeros(len(rows)), np.ones(len(rows), dtype=bool)
        for segment, chosen, local in self._split(rows):
            part, absent = segment.sort_key(field, kind, local)
            if kind == "keyword" and not self.plain and len(local):
                mapping = self._keyword_map(field, segment)
                part = mapping[np.maximum(part, 0).astype(np.int64)].astype(np.float64)
            key[chosen], missing[chosen] = part, absent
        key[missing] = 0.0
        return key, missing

    def facet_counts(self, field: str, part: str, rows: np.ndarray) -> dict[str, int]:
        """Value -> number of ``rows`` with it (``part``: ``year``/``month`` of a datetime),
        largest count first, then by value."""
        if field not in self.registry:
            return {}
        kind = self.registry.type_of(field)
        counts: Counter[str] = Counter()
        for segment, _, local in self._split(np.asarray(rows, dtype=np.int64)):
            counts.update(segment.facet_tally(field, kind, part, local))
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    # --- segments -----------------------------------------------------------------------------
    def layout(self) -> _Layout:
        """The rows of a segmented version in each segment (computed once)."""
        with self._lock:
            if self._layout is None:
                self._layout = _lay_out(self.base, self.delta, self.deleted)
            return self._layout

    def _base_rows(self, keys: np.ndarray) -> np.ndarray:
        """The base's row of each id, -1 where it has none or it was deleted."""
        rows = self.base.positions(keys)
        if len(self.deleted):
            at = np.searchsorted(self.deleted, rows)
            dead = self.deleted[np.minimum(at, len(self.deleted) - 1)] == rows
            rows = np.where(dead, -1, rows)
        return rows

    def _split(self, rows: np.ndarray) -> list[tuple[Segment, np.ndarray | slice, np.ndarray]]:
        """(segment, which of ``rows``, their rows in it) for each segment ``rows`` touch."""
        if self.plain:
            return [(self.base, slice(None), rows)]
        layout = self.layout()
        in_delta, local = layout.in_delta[rows], layout.local[rows]
        out: list[tuple[Segment, np.ndarray | slice, np.ndarray]] = [
            (self.base, ~in_delta, local[~in_delta])
        ]
        if self.delta is not None:
            out.append((self.delta, in_delta, local[in_delta]))
        return out

    def _keyword_map(self, field: str, segment: Segment) -> np.ndarray:
        """A segment's keyword codes of ``field`` -> ranks among both segments' values."""
        with self._lock:
            maps = self._keyword_maps.get(field)
        if maps is None:
            segments = [s for s in (self.base, self.delta) if s is not None]
            dictionaries = {id(s): s.dictionary(field) for s in segments}
            known = [d for d in dictionaries.values() if d is not None]
            union = np.unique(np.concatenate(known)) if known else np.zeros(0, "S1")
            maps = {
                key: np.zeros(1, np.int64) if d is None else np.searchsorted(union, d)
                for key, d in dictionaries.items()
            }
            with self._lock:
                self._keyword_maps[field] = maps
        return maps[id(segment)]


def _segment_mask(segment: Segment, where: Where) -> np.ndarray:
    mask = np.ones(len(segment), dtype=bool)
    for condition in where.conditions:
        mask &= segment.condition_mask(condition)
    return mask


def _lay_out(base: Segment, delta: Segment | None, deleted: np.ndarray) -> _Layout:
    """Rows in id order over the live base rows and the delta rows (ids disjoint)."""
    live = np.ones(len(base), dtype=bool)
    live[deleted] = False
    base_live = np.flatnonzero(live)
    live_before = np.concatenate([[0], np.cumsum(live)])  # live base rows before each base row
    delta_ids = np.asarray(delta.ids) if delta is not None else np.zeros(0, "S1")
    ins = live_before[np.searchsorted(np.asarray(base.ids), delta_ids)]
    delta_at = ins + np.arange(len(delta_ids))
    ranks = np.arange(len(base_live))
    base_at = ranks + np.searchsorted(ins, ranks, side="right")
    count = len(base_live) + len(delta_ids)
    in_delta = np.zeros(count, dtype=bool)
    in_delta[delta_at] = True
    local = np.empty(count, dtype=np.int64)
    local[base_at], local[delta_at] = base_live, np.arange(len(delta_ids))
    return _Layout(base_live, base_at, delta_at, in_delta, local)
