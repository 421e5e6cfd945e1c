"""The corpus store: the record of an indexed image collection, independent of any search index.

The store outlives every index: an index (``indexer.engines``) is built from it, and re-indexing
into another engine never re-encodes an image. It is a directory::

    manifest.json           {"format": "lexvla-corpus-store", "format_version": 2,
                             "checkpoint_id", "vocabulary_hash", "vocabulary_size", "threshold",
                             "top_k", "max_words", "created", "updated",
                             "counts": {"images", "deleted",
                             "skipped", "shards", "done"},
                             "fields": {name: {"type", "source"}}}  (metadata field registry)
    vocabulary.json         model.vocabulary.Vocabulary.save (its hash is checked on open)
    vectors/shard-00000.npz float32 CSR (rows x vocabulary size), scipy.sparse.save_npz
    vectors/shard-00000.ids.json   the ids of that shard's rows, in row order
    metadata.sqlite         tables images, fields, shards, skipped, done (indexer.catalog.SCHEMA)
    thumbnails/ab/<sha256>.jpg     ~256 px JPEG per distinct image content (sha256 of its bytes)

Vectors are in vocabulary index space and never rewritten: deleting an image sets its
``deleted`` flag, and re-adding a deleted id points its row at the new shard. Readers take the
live rows of each shard from SQLite, so a shard row that nothing points at is simply never seen.

Atomicity. The SQLite transaction of :meth:`CorpusStore.append_shard` is the single commit point.
The shard files are written first (temporary name, fsync, ``os.replace``), then one transaction
inserts the shard, its image rows, its skipped files and the job's completion marker. A crash
before the commit leaves at most an unreferenced shard file, which no reader looks at and which
the next append of that shard number overwrites; a crash after it leaves a complete shard. So a
resumed job that skips the chunks whose ``done`` key is recorded loses nothing and duplicates
nothing. ``manifest.json`` is rewritten (atomically) after each commit; its counts are a summary
for humans and tools, SQLite is authoritative. One writer at a time (readers may be concurrent:
SQLite runs in WAL mode).

Format versions: 2 added per-image metadata (:mod:`indexer.metadata`; the ``images.metadata``
column and the ``fields`` table). A version-1 store is migrated when it is opened
(:class:`~indexer.catalog.Catalog`) and its manifest rewritten as version 2.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_write_bytes, atomic_write_json, now_iso
from indexer.catalog import Catalog, ImageRecord
from indexer.decode import ImageInfo
from indexer.engines.base import check_rows
from indexer.engines.versions import write_lock
from indexer.fields import FieldColumns
from indexer.metadata import BUILTIN_FIELDS, FieldRegistry
from indexer.shard_files import map_csr_npz, shard_path, write_shard
from model.data import Skipped
from model.vocabulary import Vocabulary, VocabularyMismatchError

__all__ = ["CorpusStore", "ImageRecord"]

FORMAT = "lexvla-corpus-store"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before per-image metadata (migrated on open)
MANIFEST = "manifest.json"
DATABASE = "metadata.sqlite"
_SHARD_CACHE = 4096  # shards kept open (memory-mapped: they cost address space, not memory)


class CorpusStore:
    """Sparse vectors + image metadata + thumbnails of one corpus, encoded by one checkpoint."""

    def __init__(self, root: Path, manifest: dict[str, Any], vocabulary: Vocabulary):
        self.root = root
        self.manifest = manifest
        self.vocabulary = vocabulary
        self.catalog = Catalog(root / DATABASE)
        self.fields = FieldRegistry(self.catalog.fields())
        self._lock = threading.RLock()
        self._shards: OrderedDict[int, sp.csr_matrix] = OrderedDict()

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        vocabulary: Vocabulary,
        checkpoint_id: str,
        threshold: float,
        top_k: int | None = None,
        max_words: int | None = None,
    ) -> CorpusStore:
        """Make a new, empty store at ``path`` (which must not hold one already)."""
        root = Path(path)
        if (root / MANIFEST).exists():
            raise FileExistsError(f"{root} already holds a corpus store; open it instead")
        (root / "vectors").mkdir(parents=True, exist_ok=True)
        (root / "thumbnails").mkdir(exist_ok=True)
        vocabulary.save(root)
        now = now_iso()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "checkpoint_id": checkpoint_id,
            "vocabulary_hash": vocabulary.hash,
            "vocabulary_size": len(vocabulary),
            "threshold": float(threshold),
            "top_k": top_k,
            "max_words": max_words,
            "created": now,
            "updated": now,
            "counts": {},
        }
        store = cls(root, manifest, vocabulary)
        store.catalog.save_fields(list(BUILTIN_FIELDS.values()))
        store._write_manifest()  # last: a directory without a manifest is not a store
        return store

    @classmethod
    def open(cls, path: str | Path, expected_vocabulary: Vocabulary | None = None) -> CorpusStore:
        """Open a store; refuse it if its vocabulary differs from ``expected_vocabulary``."""
        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise FileNotFoundError(f"no corpus store at {root} (missing {MANIFEST})")
        manifest = json.loads((root / MANIFEST).read_text())
        version = manifest.get("format_version")
        if manifest.get("format") != FORMAT or version not in READABLE_VERSIONS:
            raise ValueError(
                f"{root} is not a version-{FORMAT_VERSION} corpus store "
                f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r})"
            )
        vocabulary = Vocabulary.load(root)
        if vocabulary.hash != manifest["vocabulary_hash"]:
            raise VocabularyMismatchError(
                f"{root}: vocabulary.json (hash {vocabulary.short_hash}) does not match the "
                f"manifest's vocabulary hash {manifest['vocabulary_hash'][:12]}"
            )
        if expected_vocabulary is not None:
            expected_vocabulary.check_matches(vocabulary, "the model", f"the corpus store {root}")
        store = cls(root, manifest, vocabulary)  # the catalog migrates an older store
        if version != FORMAT_VERSION:
            store.catalog.save_fields(list(BUILTIN_FIELDS.values()))
            store.manifest["format_version"] = FORMAT_VERSION
            store._write_manifest()
        return store

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> CorpusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------
    def append_shard(
        self,
        ids: Sequence[str],
        rows: sp.csr_matrix,
        records: Sequence[ImageInfo],
        thumbnails: Sequence[bytes | None] | None = None,
        skipped: Sequence[Skipped] = (),
        done_key: str | None = None,
    ) -> int | None:
        """Add one shard of encoded images (and the batch's skipped files) in one commit.

        ``done_key`` marks a unit of a resumable job as complete in the same transaction. A
        batch with no image (only skipped files) writes no shard and returns None.
        """
        ids = [str(i) for i in ids]
        thumbs: list[bytes | None] = list(thumbnails or [None] * len(ids))
        self._check_rows(ids, rows, records, thumbs)
        with self._lock, write_lock(self.root):
            duplicate = self.catalog.first_live(ids)
            if duplicate is not None:
                raise ValueError(f"image {duplicate!r} is already in the corpus store")
            shard = None
            if ids:
                top = self.catalog.scalar("SELECT MAX(shard) FROM shards")
                shard = 0 if top is None else int(top) + 1
                for rec, thumb in zip(records, thumbs, strict=True):
                    if thumb is not None:
                        self._write_thumbnail(rec.sha256, thumb)
                self._write_shard_files(shard, ids, rows)
            has_thumb = [t is not None for t in thumbs]
            self.catalog.commit_batch(
                shard, records, has_thumb, rows.nnz, skipped, done_key, now_iso(),
                list(self.fields.fields.values()),
            )  # fmt: skip
            self._write_manifest()
            return shard

    def record_skipped(self, skipped: Sequence[Skipped], done_key: str | None = None) -> None:
        """Record files that could not be used (and optionally a completed job unit)."""
        empty = sp.csr_matrix((0, len(self.vocabulary)), dtype=np.float32)
        self.append_shard([], empty, [], skipped=skipped, done_key=done_key)

    def declare_fields(self, specs: Sequence[str]) -> None:
        """Record ``--field name:type`` declarations now (ValueError: a type would change)."""
        if not specs:
            return
        with self._lock:
            self.fields.declare(specs)
            self.catalog.save_fields(list(self.fields.fields.values()))
            self._write_manifest()

    def update_metadata(self, updates: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> int:
        """Replace live images' (extra, metadata record) without touching their vectors."""
        if not updates:
            return 0
        with self._lock, write_lock(self.root):
            changed = self.catalog.update_metadata(updates, list(self.fields.fields.values()))
            self._write_manifest()
        return changed

    def delete(self, ids: Sequence[str]) -> int:
        """Mark images deleted (their vectors stay on disk); returns how many were live."""
        with self._lock, write_lock(self.root):
            changed = self.catalog.delete([str(i) for i in ids])
            self._write_manifest()
        return changed

    # --- reading ------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of live images."""
        return int(self.catalog.scalar("SELECT COUNT(*) FROM images WHERE deleted=0"))

    def has_id(self, image_id: str) -> bool:
        query = "SELECT 1 FROM images WHERE id=? AND deleted=0"
        return self.catalog.scalar(query, (image_id,)) is not None

    def has_sha256(self, sha256: str) -> bool:
        query = "SELECT 1 FROM images WHERE sha256=? AND deleted=0 LIMIT 1"
        return self.catalog.scalar(query, (sha256,)) is not None

    def is_done(self, key: str) -> bool:
        return self.catalog.scalar("SELECT 1 FROM done WHERE key=?", (key,)) is not None

    def done_keys(self) -> set[str]:
        return set(self.catalog.column("SELECT key FROM done"))

    def skipped(self) -> list[Skipped]:
        return self.catalog.skipped()

    def ids(self) -> list[str]:
        """Live ids in storage order (shard, row)."""
        return self.catalog.column("SELECT id FROM images WHERE deleted=0 ORDER BY shard, row")

    def metadata(self, image_id: str) -> ImageRecord:
        """The record of a live image; KeyError if unknown or deleted."""
        record = self.catalog.record(image_id)
        if record is None:
            raise KeyError(f"no image {image_id!r} in the corpus store")
        return record

    def metadata_records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id -> metadata record of the live images among ``ids`` (unknown ids left out)."""
        return {i: r.metadata for i, r in self.catalog.records(ids).items()}

    def field_columns(self, sequence: int | None = None) -> FieldColumns:
        """The live images' metadata as columns (what a published index version carries), as
        of the write ``sequence`` (:meth:`Catalog.sequence`, read before the store was)."""
        columns = FieldColumns.build(*self.catalog.live_metadata(), self.fields)
        columns.sequence = sequence
        return columns

    def thumbnail(self, image_id: str) -> bytes | None:
        """JPEG thumbnail bytes of a live image, None if it has none; KeyError if unknown."""
        rec = self.metadata(image_id)
        path = self._thumbnail_path(rec.sha256)
        return path.read_bytes() if rec.has_thumbnail and path.is_file() else None

    def iter_shards(self) -> Iterator[tuple[list[str], sp.csr_matrix]]:
        """(ids, CSR rows) of the live images of each shard, in order; bounded memory."""
        for _, ids, rows in self.iter_numbered_shards():
            yield ids, rows

    def iter_numbered_shards(self) -> Iterator[tuple[int, list[str], sp.csr_matrix]]:
        """(shard number, ids, CSR rows) of each shard with live images (resumable readers)."""
        for shard in self.catalog.column("SELECT shard FROM shards ORDER BY shard"):
            live = self.catalog.live_rows(shard)
            if live:
                matrix = self._load_shard(shard)
                yield shard, [i for i, _ in live], matrix[np.array([r for _, r in live])]

    def payloads(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Searchable metadata of live images (path, size, format, sha256), in the given order."""
        found = self.catalog.records(ids)
        return [
            {
                "path": r.path,
                "width": r.width,
                "height": r.height,
                "format": r.format,
                "sha256": r.sha256,
            }
            for r in (found[i] for i in ids)
        ]

    def vectors(self) -> tuple[list[str], sp.csr_matrix]:
        """All live (ids, CSR rows); for a large corpus prefer :meth:`iter_shards`."""
        ids: list[str] = []
        parts = [self._empty()]
        for shard_ids, rows in self.iter_shards():
            ids.extend(shard_ids)
            parts.append(rows)
        return ids, sp.vstack(parts, format="csr", dtype=np.float32)

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        """CSR rows of live images, in the order given; KeyError names the first missing id.

        The rows are copied straight out of the memory-mapped shards (one CSR built at the
        end): re-scoring asks for ~40 rows spread over as many shards on every search, and
        slicing each shard as a scipy matrix cost ~0.1 ms a shard.
        """
        where = self.catalog.locate(ids)
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the corpus store, e.g. {missing[0]!r}")
        data, indices, lengths = [], [], []
        for image_id in ids:
            shard, row = where[image_id]
            matrix = self._load_shard(shard)
            a, b = int(matrix.indptr[row]), int(matrix.indptr[row + 1])
            data.append(matrix.data[a:b])
            indices.append(matrix.indices[a:b])
            lengths.append(b - a)
        indptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if not ids:
            return self._empty()
        return sp.csr_matrix(
            (np.concatenate(data).astype(np.float32, copy=False),
             np.concatenate(indices).astype(np.int32, copy=False), indptr),
            shape=(len(ids), len(self.vocabulary)),
        )  # fmt: skip

    # --- internals ----------------------------------------------------------------------------
    def _empty(self) -> sp.csr_matrix:
        return sp.csr_matrix((0, len(self.vocabulary)), dtype=np.float32)

    def _check_rows(
        self, ids: list[str], rows: sp.csr_matrix, records: Sequence[ImageInfo],
        thumbnails: list[bytes | None],
    ) -> None:  # fmt: skip
        check_rows(ids, rows, len(self.vocabulary))
        if len(records) != len(ids) or len(thumbnails) != len(ids):
            raise ValueError("ids, records and thumbnails must have the same length")
        if any(r.id != i for r, i in zip(records, ids, strict=True)):
            raise ValueError("records must be in the same order as ids")

    def _write_shard_files(self, shard: int, ids: list[str], rows: sp.csr_matrix) -> None:
        write_shard(self.root / "vectors", shard, ids, rows)
        self._shards.pop(shard, None)

    def _load_shard(self, shard: int) -> sp.csr_matrix:
        with self._lock:
            if shard in self._shards:
                self._shards.move_to_end(shard)
                return self._shards[shard]
            matrix = map_csr_npz(shard_path(self.root / "vectors", shard))
            self._shards[shard] = matrix
            while len(self._shards) > _SHARD_CACHE:
                self._shards.popitem(last=False)
            return matrix

    def thumbnail_path(self, sha256: str) -> Path:
        """Where the thumbnail of images with these bytes is (content-addressed)."""
        return self._thumbnail_path(sha256)

    def _thumbnail_path(self, sha256: str) -> Path:
        return self.root / "thumbnails" / sha256[:2] / f"{sha256}.jpg"

    def _write_thumbnail(self, sha256: str, data: bytes) -> None:
        path = self._thumbnail_path(sha256)
        if not path.exists():  # content-addressed: identical images share one thumbnail
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)

    def _write_manifest(self) -> None:
        self.manifest = {
            **self.manifest,
            "counts": self.catalog.counts(),
            "fields": self.fields.to_json(),
            "updated": now_iso(),
        }
        atomic_write_json(self.root / MANIFEST, self.manifest)
