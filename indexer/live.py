"""Single-image writes on a served index: add (or replace), change metadata, delete.

Batch jobs (:mod:`indexer.runner`) load millions of images; a photo library also receives
photos one at a time and removes some. :class:`LiveWriter` does that on the corpus store and the
index directory the service serves, in three steps per write:

1. the change is committed to the corpus store (vector shard and thumbnail files fsynced, then
   one SQLite transaction);
2. a new index version is made from the current one with the change applied (the compact
   engine links its unchanged blocks, seals added rows into a small block and records deletions
   as live masks, so a version costs what changed) and published (files fsynced, then
   ``CURRENT`` replaced atomically), with the store's metadata as its columns;
3. only then does the caller answer: an acknowledged write is on disk, and every serving process
   (each follows ``CURRENT``, ``LEXVLA_INDEX_REFRESH_S``) searches it within that interval.

One writer at a time: the steps run under the index directory's write lock (an exclusive
``flock``, :func:`~indexer.engines.versions.write_lock`), which batch builds take around their
build and publish too, so writes from every worker of a server and batch jobs are serialised; the
corpus store takes its own lock around each commit (shard numbers are never taken twice).
A crash between steps 1 and 2 leaves the store ahead of the index; the next write's version is
made from the store's live images where they differ (:meth:`LiveWriter.reconcile`), so nothing
acknowledged is lost and nothing half-written is served. A full disk raises :class:`DiskFull`.

What a write costs. Each version records the corpus store's write sequence it reflects (one
step per store commit, :meth:`~indexer.catalog.Catalog.sequence`; in its metadata columns). When
the current version's sequence is the store's before this write, and the store moved by exactly
this write's commits, nothing was missed: the version is the current one with this change
applied, its metadata columns too (:meth:`~indexer.fields.FieldColumns.changed`: the unchanged
columns are linked, the changed rows written), at a cost that does not grow with the collection.
Otherwise (a crash between steps 1 and 2, a batch job or a command that changed the store, a
version that records no sequence) the write compares the whole index with the store
(:meth:`LiveWriter.reconcile`) and makes the columns from the store, and records the sequence
again. The writer keeps the index it published open for its next write, and opens the current
version again only when another process published since. Adds that arrive together share one
write (:mod:`indexer.group_commit`); the compact engine merges its small blocks by tiers
(:mod:`indexer.engines.compact.merge`), so no write rewrites more than its share. What tiers
leave (small blocks, deleted rows, a metadata delta) costs every search until
:meth:`LiveWriter.optimize` rewrites the index in a batch build's shape; a server runs it once
writes pause (``optimize_after_s``), ``lexvla index optimize`` by hand.
"""

from __future__ import annotations

import contextlib
import errno
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from indexer.decode import Decoded, ImageInfo, decode_item, thumbnail_jpeg
from indexer.engines import open_index
from indexer.engines.base import SearchIndex
from indexer.engines.versions import CURRENT, current_version, prune, publish, write_lock
from indexer.fields import FieldColumns
from indexer.metadata import (
    COLLECTION,
    DEFAULT_COLLECTION,
    MetadataError,
    check_collection,
    source_fields,
)
from indexer.store import CorpusStore
from model.data import Skipped, SourceItem
from model.sparsify import keep_heaviest

KEEP_VERSIONS = 4  # versions kept: a serving process may still be opening the one before last


class DiskFull(OSError):
    """The disk holding the store or the index is full (nothing was acknowledged)."""


@dataclass
class Upload:
    """One image sent for indexing: its bytes, and optionally its id, collection, metadata."""

    data: bytes
    name: str = "upload"
    id: str | None = None
    collection: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """An upload decoded and typed, ready to encode (``image``) and write."""

    info: ImageInfo
    image: Any  # PIL image, RGB
    thumbnail: bytes


@dataclass(frozen=True)
class Change:
    """One write as the index sees it: ids whose rows go (deleted, or replaced by ``added``),
    ids whose records (and with ``rows``, vectors) are written, the store's write sequence
    before the write and how many commits it made."""

    since: int
    commits: int
    removed: Sequence[str] = ()
    added: Sequence[str] = ()
    rows: sp.csr_matrix | None = None


def default_id(sha256: str) -> str:
    return f"upload/{sha256[:16]}"


class LiveWriter:
    """Writes on ``store`` and the index directory ``index_dir`` (see the module docstring)."""

    def __init__(self, store: CorpusStore, index_dir: str | Path, max_pixels: int):
        self.store = store
        self.index_dir = Path(index_dir)
        self.max_pixels = max_pixels
        self._open: tuple[str, SearchIndex] | None = None  # (version, its index), see _current
        self.written = False  # a write published since the last optimize (optimize_after_s)

    # --- preparing (no lock, no model) --------------------------------------------------------
    def prepare(self, upload: Upload) -> Prepared | Skipped:
        """Decode and type one upload: the same limits and skip reasons as indexing."""
        item = SourceItem(
            id=upload.id or "", path=f"upload:{upload.name}", data=upload.data,
            extra={**upload.metadata, **({COLLECTION: upload.collection} if upload.collection else {})},
        )  # fmt: skip
        decoded = decode_item(item, self.max_pixels)
        if isinstance(decoded, Skipped):
            return decoded
        assert isinstance(decoded, Decoded)
        image_id = upload.id or default_id(decoded.info.sha256)
        raw = source_fields(item.extra)
        try:
            if COLLECTION in raw:
                check_collection(str(raw[COLLECTION]))
            self.store.fields.infer([raw])
            typed = self.store.fields.coerce(raw)
        except (MetadataError, ValueError) as err:
            return Skipped("bad_metadata", item.path, str(err), image_id)
        typed.setdefault(COLLECTION, DEFAULT_COLLECTION)
        info = decoded.info
        metadata = {**info.metadata, **typed, "path": item.path}
        info = ImageInfo(
            image_id, item.path, info.bytes, info.format, info.width, info.height, info.sha256,
            dict(upload.metadata), metadata,
        )  # fmt: skip
        return Prepared(info, decoded.image, thumbnail_jpeg(decoded.image))

    # --- writing (one writer at a time) -------------------------------------------------------
    def add(self, prepared: Sequence[Prepared], rows: sp.csr_matrix) -> str:
        """Store and index ``prepared`` (row i is image i); an id already present is replaced.
        Returns the published version's name."""
        ids = [p.info.id for p in prepared]
        budget = self.store.manifest.get("max_words")
        if budget is not None:  # the store's word budget, as its batch jobs apply it
            rows = keep_heaviest(sp.csr_matrix(rows, dtype=np.float32), int(budget))
        with self.locked(), disk_errors():
            since = self.store.catalog.sequence()
            replaced = [i for i in ids if self.store.has_id(i)]
            if replaced:
                self.store.delete(replaced)
            self.store.append_shard(
                ids, rows, [p.info for p in prepared], [p.thumbnail for p in prepared]
            )
            change = Change(since, 1 + bool(replaced), replaced, ids, rows)
            version = self._publish(change)
            assert version is not None
            return version

    def update(self, image_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change an image's metadata (a null value removes the field); KeyError if unknown,
        MetadataError for a value that does not parse. Returns the new record."""
        with self.locked(), disk_errors():
            since = self.store.catalog.sequence()
            record = self.store.metadata(image_id)
            raw = {k: v for k, v in changes.items() if v is not None}
            if COLLECTION in raw:
                check_collection(str(raw[COLLECTION]))
            self.store.fields.infer([raw])
            typed = self.store.fields.coerce(raw)
            new = {k: v for k, v in {**record.metadata, **typed}.items() if k not in changes
                   or changes[k] is not None}  # fmt: skip
            new.setdefault(COLLECTION, DEFAULT_COLLECTION)
            extra = {**record.extra, **{k: v for k, v in changes.items() if v is not None}}
            self.store.catalog.save_fields(list(self.store.fields.fields.values()))
            self.store.update_metadata({image_id: (extra, new)})
            self._publish(Change(since, 1, added=[image_id]))
            return new

    def delete(self, image_id: str) -> bool:
        """Remove an image from the store and the index (its thumbnail file too, unless another
        image has the same bytes); False if it was not there."""
        with self.locked(), disk_errors():
            since = self.store.catalog.sequence()
            try:
                record = self.store.metadata(image_id)
            except KeyError:
                return False
            self.store.delete([image_id])
            if not self.store.has_sha256(record.sha256):
                with contextlib.suppress(FileNotFoundError):
                    self.store.thumbnail_path(record.sha256).unlink()
            self._publish(Change(since, 1, removed=[image_id]))
            return True

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The index directory's write lock (:func:`~indexer.engines.versions.write_lock`)."""
        return write_lock(self.index_dir)

    def catch_up(self) -> str | None:
        """Publish a version with exactly the store's live images if the current one differs
        (a crash between committing a write and publishing it); the version, or None."""
        with self.locked():
            return self._publish(None)

    @property
    def quiet_s(self) -> float:
        """Seconds since any process last published a version of this index (``CURRENT``)."""
        return time.time() - (self.index_dir / CURRENT).stat().st_mtime

    def optimize(self) -> str | None:
        """Publish the current version in a batch build's shape, when writes left anything to
        rewrite: the engine's :meth:`~indexer.engines.base.SearchIndex.optimize` (small blocks
        and deleted rows) and the metadata columns folded into one base; the version, or
        None."""
        with self.locked():
            self.written = False
            return self._publish_with(optimize)

    def _publish(self, change: Change | None) -> str | None:
        """Publish the current version with ``change`` applied (see the module docstring);
        ``None``: catch up only, returning None when the version reflects the store."""
        version = self._publish_with(lambda index: self._apply(index, change))
        self.written = self.written or version is not None
        return version

    def _publish_with(self, apply: Callable[[SearchIndex], bool]) -> str | None:
        """Publish the current version once ``apply`` changed it (False: nothing to publish,
        None returned); the index stays open for the next write. Caller holds the lock."""
        index = self._current()
        try:
            if not apply(index):
                return None
            version = publish(index, self.index_dir)
        except BaseException:
            self._open = None  # half changed: the next write opens the current version again
            index.close()
            raise
        self._open = (version.name, index)
        prune(self.index_dir, keep=KEEP_VERSIONS)
        return version.name

    def _apply(self, index: SearchIndex, change: Change | None) -> bool:
        """``change`` applied to ``index`` with its metadata columns; False when there is no
        change and the index reflects the store already."""
        fields = self._changed_fields(index, change)
        if fields is not None:
            assert change is not None
            _apply_rows(index, change)
            index.fields = fields
            return True
        held = index.fields.sequence if index.fields is not None else None
        sequence = self.store.catalog.sequence()  # before the store is read
        if change is None and sequence == held:
            return False
        behind = self.reconcile(index, change)
        if change is None and not behind and held is None:
            return False  # no sequence to go by, and the same images
        index.fields = self.store.field_columns(sequence)
        return True

    def _current(self) -> SearchIndex:
        """The current version, opened; the index this writer published last when that is
        still current (no other process published since), so a write does not reopen every
        block and column of the version it made itself."""
        name = current_version(self.index_dir).name
        if self._open is not None:
            published, index = self._open
            if published == name:
                return index
            self._open = None
            index.close()
        index = open_index(self.index_dir)
        self._open = (name, index)
        return index

    def close(self) -> None:
        """Close the index kept open between writes (after the write in progress)."""
        with self.locked():
            if self._open is not None:
                self._open[1].close()
                self._open = None

    def _changed_fields(self, index: SearchIndex, change: Change | None) -> FieldColumns | None:
        """The columns of ``index`` with ``change`` applied, when the index reflected the store
        up to this write and the store holds nothing else since; None otherwise."""
        if change is None or index.fields is None or index.fields.sequence != change.since:
            return None
        sequence = change.since + change.commits
        if self.store.catalog.sequence() != sequence:
            return None  # another writer's commit came in between
        records = self.store.metadata_records(change.added)
        if len(records) != len(change.added):
            return None
        fields = FieldColumns.changed(
            index.fields, change.removed, change.added, [records[i] for i in change.added],
            self.store.fields,
        )  # fmt: skip
        fields.sequence = sequence
        return fields

    def reconcile(self, index: SearchIndex, change: Change | None) -> bool:
        """Apply ``change`` to ``index``, and any earlier write the store holds but the index
        does not (a crash between committing and publishing): the index ends with exactly the
        store's live images. True when anything beyond this write was missing. What the index
        holds is read from its version's metadata columns, which every publish makes from the
        store's live images."""
        known = index.fields is not None  # a version from before versions carried metadata
        held = set(index.fields.id_texts(np.arange(len(index.fields)))) if index.fields else set()
        if change is not None:
            _apply_rows(index, change)
            held -= set(change.removed)
            held |= set(change.added) if change.rows is not None else set()
        stored = set(self.store.ids())
        if not known or stored == held:
            return False
        index.delete(sorted(held - stored))
        missing = sorted(stored - held)
        if missing:
            index.delete(missing)
            index.add(missing, self.store.vectors_of(missing))
        return True


def optimize(index: SearchIndex) -> bool:
    """Rewrite ``index`` in a batch build's shape, before it is published: the engine's
    :meth:`~indexer.engines.base.SearchIndex.optimize` and its metadata columns folded into one
    base segment; True when anything changed."""
    folded = index.fields.folded() if index.fields is not None else None
    changed = index.optimize() or folded is not index.fields
    index.fields = folded
    return changed


def _apply_rows(index: SearchIndex, change: Change) -> None:
    """The engine's side of ``change``: removed rows deleted, added rows (re)written."""
    index.delete(list(change.removed))
    if change.rows is not None:
        index.delete(list(change.added))
        index.add(list(change.added), change.rows)


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                exc.errno,
                f"the disk is full ({exc.filename or 'store or index'}): free space, then retry; "
                "nothing was acknowledged",
            ) from None
        raise


def metadata_json(text: str) -> dict[str, Any]:
    """A JSON object of metadata (form field); ValueError in one line otherwise."""
    value = json.loads(text) if text.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object")
    return value
