"""The corpus store's catalog: image metadata, shards, skipped files and job markers in SQLite.

One SQLite file (``metadata.sqlite``) answers every question about a corpus except the vectors
themselves: which images exist and where their rows are (shard, row), which are deleted, which
files were skipped and why, and which units of a resumable job are complete. Its transactions are
the store's commit points (see :mod:`indexer.store`). WAL mode lets readers (the service) run while
one writer (an indexing job) appends.

Metadata (:mod:`indexer.metadata`) is stored as one JSON document per image, in the ``metadata``
column of its ``images`` row, plus the typed field registry in the ``fields`` table (mirrored in
the store's ``manifest.json``). Why a document and not a key/value table: the readers that come
after it want either every field of a few images (a hit, ``/explain``, an export line: the row
they read anyway) or one field of every live image in storage order (a filter building columnar
arrays or payload indexes: one scan of ``images ORDER BY shard, row`` with SQLite's
``json_extract``, typed by the registry); a key/value table would cost a row and an index entry
per field and a join or pivot for both. ``extra`` keeps the source's raw values as given
(captions included); ``metadata`` holds the typed values (``path`` and ``bytes`` repeat their
columns, so that a record is complete on its own). A store made before metadata existed
gets the column on open, each image's record filled from its row (``path``, ``bytes``,
``collection`` "default"), and the built-in fields.

The write sequence (table ``state``) counts the transactions that changed the live images or their
records, each in its own transaction: an index version records the sequence it reflects, so a
live write knows in one read whether anything reached the store that its index lacks
(:mod:`indexer.live`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.decode import ImageInfo
from indexer.metadata import Field
from model.data import Skipped

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, shard INTEGER NOT NULL, row INTEGER NOT NULL, path TEXT,
    bytes INTEGER, format TEXT, width INTEGER, height INTEGER, sha256 TEXT, extra TEXT,
    thumbnail INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0, added TEXT NOT NULL,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS images_by_shard ON images (shard, row);
CREATE INDEX IF NOT EXISTS images_by_sha256 ON images (sha256);
CREATE TABLE IF NOT EXISTS shards (
    shard INTEGER PRIMARY KEY, rows INTEGER NOT NULL, nnz INTEGER NOT NULL, added TEXT NOT NULL
);
-- skipped.reason is "<code>: <detail>" (model.data.skips.Skipped.message)
CREATE TABLE IF NOT EXISTS skipped (
    id TEXT NOT NULL, path TEXT, reason TEXT NOT NULL, job_key TEXT, added TEXT NOT NULL
);
-- the metadata field registry (indexer.metadata.FieldRegistry), built-in fields included
CREATE TABLE IF NOT EXISTS fields (name TEXT PRIMARY KEY, type TEXT NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done (
    key TEXT PRIMARY KEY, images INTEGER NOT NULL, skipped INTEGER NOT NULL, added TEXT NOT NULL
);
-- "sequence": the number of transactions that changed the live images or their records
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
COLUMNS = ("id", "shard", "row", "path", "bytes", "format", "width", "height", "sha256", "extra",
           "thumbnail", "deleted", "added", "metadata")  # fmt: skip
# A store made before per-image metadata: the column, each image's record from its row.
MIGRATE_METADATA = """
ALTER TABLE images ADD COLUMN metadata TEXT;
UPDATE images SET metadata = json_object('path', path, 'bytes', bytes, 'collection', 'default');
"""
_SQL_CHUNK = 500  # ids per "IN (...)" query, below SQLite's variable limit


@dataclass(frozen=True)
class ImageRecord:
    """An image's row in the catalog: what decode found plus where its vector lives."""

    id: str
    shard: int
    row: int
    path: str
    bytes: int
    format: str
    width: int
    height: int
    sha256: str
    extra: dict[str, Any]
    has_thumbnail: bool
    deleted: bool
    added: str
    metadata: dict[str, Any]


class Catalog:
    """Thread-safe access to ``metadata.sqlite``; every write is one transaction."""

    def __init__(self, path: Path):
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode may lose the last commits on power loss but never half of one, and
        # a lost commit only means its chunk is encoded again on resume.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._create_or_migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _create_or_migrate(self) -> None:
        """Create the tables, or add what an older store lacks; no write lock when up to date.

        The check is made again under the write lock: another process opening the same older
        store (the service's workers) may have migrated it meanwhile.
        """
        if self._up_to_date()[0]:
            return
        with self._transaction() as db:  # schema and migration commit together
            current, columns = self._up_to_date()
            if current:
                return
            for statement in SCHEMA.split(";"):
                db.execute(statement)
            if columns and "metadata" not in columns:
                for statement in MIGRATE_METADATA.split(";"):
                    db.execute(statement)

    def _up_to_date(self) -> tuple[bool, set[str]]:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        return "metadata" in columns and {"fields", "state"} <= tables, columns

    # --- writing ------------------------------------------------------------------------------
    def commit_batch(
        self,
        shard: int | None,
        records: Sequence[ImageInfo],
        has_thumbnail: Sequence[bool],
        nnz: int,
        skipped: Sequence[Skipped],
        done_key: str | None,
        now: str,
        fields: Sequence[Field] = (),
    ) -> None:
        """One transaction: the shard, its image rows, skipped files, the metadata fields its
        records use, and the done marker (and a step of the write sequence with a shard)."""
        with self._transaction() as db:
            _save_fields(db, fields)
            if shard is not None:
                _step(db)
                db.execute("INSERT INTO shards VALUES (?,?,?,?)", (shard, len(records), nnz, now))
                marks = ",".join("?" * len(COLUMNS))
                db.executemany(
                    f"INSERT OR REPLACE INTO images VALUES ({marks})",
                    [
                        _image_row(rec, shard, row, thumb, now)
                        for row, (rec, thumb) in enumerate(zip(records, has_thumbnail, strict=True))
                    ],
                )
            db.executemany(
                "INSERT INTO skipped VALUES (?,?,?,?,?)",
                [(s.id, s.source, s.message, done_key, now) for s in skipped],
            )
            if done_key is not None:
                db.execute(
                    "INSERT OR REPLACE INTO done VALUES (?,?,?,?)",
                    (done_key, len(records), len(skipped), now),
                )

    def save_fields(self, fields: Sequence[Field]) -> None:
        with self._transaction() as db:
            _save_fields(db, fields)

    def update_metadata(
        self, updates: dict[str, tuple[dict[str, Any], dict[str, Any]]], fields: Sequence[Field]
    ) -> int:
        """Replace live images' (extra, metadata) in one transaction (a step of the write
        sequence); returns how many changed."""
        changed = 0
        with self._transaction() as db:
            _save_fields(db, fields)
            _step(db)
            for image_id, (extra, metadata) in updates.items():
                changed += db.execute(
                    "UPDATE images SET extra=?, metadata=? WHERE id=? AND deleted=0",
                    (_json(extra), _json(metadata), image_id),
                ).rowcount
        return changed

    def delete(self, ids: Sequence[str]) -> int:
        """Flag live images deleted (a step of the write sequence); returns how many were live."""
        changed = 0
        with self._transaction() as db:
            _step(db)
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                query = f"UPDATE images SET deleted=1 WHERE deleted=0 AND id IN ({marks})"
                changed += db.execute(query, chunk).rowcount
        return changed

    # --- reading ------------------------------------------------------------------------------
    def scalar(self, query: str, args: Sequence[Any] = ()) -> Any:
        with self._lock:
            row = self._db.execute(query, tuple(args)).fetchone()
        return None if row is None else row[0]

    def column(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return [r[0] for r in self._db.execute(query, tuple(args))]

    def sequence(self) -> int:
        """The write sequence: one step per transaction that changed the live images or their
        records (:meth:`commit_batch` with a shard, :meth:`update_metadata`, :meth:`delete`),
        taken in that transaction; 0 for a store that has had none since it was counted."""
        return int(self.scalar("SELECT value FROM state WHERE key='sequence'") or 0)

    def counts(self) -> dict[str, int]:
        count = "SELECT COUNT(*) FROM "
        return {
            "images": int(self.scalar(count + "images WHERE deleted=0")),
            "deleted": int(self.scalar(count + "images WHERE deleted=1")),
            "skipped": int(self.scalar(count + "skipped")),
            "shards": int(self.scalar(count + "shards")),
            "done": int(self.scalar(count + "done")),
        }

    def first_live(self, ids: Sequence[str]) -> str | None:
        """The first of ``ids`` that is a live image, if any."""
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id FROM images WHERE deleted=0 AND id IN ({marks}) LIMIT 1"
            found = self.scalar(query, chunk)
            if found is not None:
                return str(found)
        return None

    def locate(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """id -> (shard, row) of the live images among ``ids``."""
        where: dict[str, tuple[int, int]] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                query = f"SELECT id, shard, row FROM images WHERE deleted=0 AND id IN ({marks})"
                where.update({i: (s, r) for i, s, r in self._db.execute(query, chunk)})
        return where

    def live_rows(self, shard: int) -> list[tuple[str, int]]:
        """(id, row) of the live images of one shard, in row order."""
        with self._lock:
            query = "SELECT id, row FROM images WHERE shard=? AND deleted=0 ORDER BY row"
            return [(i, r) for i, r in self._db.execute(query, (shard,))]

    def record(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            query = f"SELECT {', '.join(COLUMNS)} FROM images WHERE id=? AND deleted=0"
            row = self._db.execute(query, (image_id,)).fetchone()
        return None if row is None else _record(row)

    def records(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """id -> record of the live images among ``ids`` (one query per 500 ids)."""
        out: dict[str, ImageRecord] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                query = (
                    f"SELECT {', '.join(COLUMNS)} FROM images WHERE deleted=0 AND id IN ({marks})"
                )
                out.update((row[0], _record(row)) for row in self._db.execute(query, chunk))
        return out

    def live_metadata(self) -> tuple[list[str], list[dict[str, Any]]]:
        """(ids, metadata records) of every live image."""
        with self._lock:
            rows = self._db.execute("SELECT id, metadata FROM images WHERE deleted=0").fetchall()
        return [r[0] for r in rows], [json.loads(r[1] or "{}") for r in rows]

    def fields(self) -> list[Field]:
        with self._lock:
            rows = self._db.execute("SELECT name, type, source FROM fields ORDER BY name")
            return [Field(*row) for row in rows]

    def skipped(self) -> list[Skipped]:
        with self._lock:
            rows = self._db.execute("SELECT id, path, reason FROM skipped ORDER BY rowid")
            return [Skipped.from_message(reason, path or "", i) for i, path, reason in rows]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _step(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO state VALUES ('sequence', 1) ON CONFLICT(key) DO UPDATE SET value=value+1"
    )


def _save_fields(db: sqlite3.Connection, fields: Sequence[Field]) -> None:
    # a field's type never changes (FieldRegistry.declare refuses it), so "OR IGNORE" is exact
    db.executemany(
        "INSERT OR IGNORE INTO fields VALUES (?,?,?)", [(f.name, f.type, f.source) for f in fields]
    )


def _image_row(rec: ImageInfo, shard: int, row: int, thumb: bool, now: str) -> tuple[Any, ...]:
    fields = {**vars(rec), "shard": shard, "row": row, "thumbnail": int(thumb)}
    fields.update(extra=_json(rec.extra), metadata=_json(rec.metadata))
    fields.update(deleted=0, added=now)
    return tuple(fields[c] for c in COLUMNS)


def _record(row: tuple[Any, ...]) -> ImageRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    values["extra"] = json.loads(values["extra"] or "{}")
    values["metadata"] = json.loads(values["metadata"] or "{}")
    values["has_thumbnail"] = bool(values.pop("thumbnail"))
    values["deleted"] = bool(values["deleted"])
    return ImageRecord(**values)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start : start + _SQL_CHUNK]
