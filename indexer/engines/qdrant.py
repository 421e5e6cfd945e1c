"""Qdrant engine: exact sparse search in Qdrant, in-process (Qdrant Edge) or on a server/cluster.

One point per image: the sparse vector ``lex`` (vocabulary indices as dimensions, no IDF
modifier, so a score is the plain dot product), and a payload with the image ``id``, its strong
``words`` (:mod:`indexer.filters`: integer vocabulary indices, with a lookup index, which word
filters query) and the image's metadata when the caller passes it. Point ids are UUIDs derived
from the image id (``uuid5``), so upserting the same images again changes nothing: a re-run or
resumed job is idempotent. ``add`` refuses ids already in the index (the protocol's rule);
``upsert`` is the idempotent write the indexing jobs use.

Value types (``datatype``): ``float32`` (scores are the float32 dot products: ``exact``),
``float16`` or ``uint8``: Qdrant's sparse index then keeps its weights in that type (uint8 with a
scale and offset per posting list, chosen by Qdrant, so no single scale exists to record), and
top-k is approximate; the service re-scores candidates exactly. The stored vectors stay float32
whatever the value type, so :meth:`vectors_of` returns the rows exactly as added.

Back ends (:mod:`indexer.engines.qdrant_backends`, :mod:`indexer.engines.qdrant_server`), the
same code above them:

- **embedded** (default): a Qdrant Edge shard in ``<version>/shard/``. ``on_disk`` keeps vectors,
  index and payload memory-mapped; the build calls ``optimize()`` every ``optimize_every``
  upserted points and bounds optimised segments to ``segment_points`` points, so memory during a
  build stays bounded (``docs/benchmarks.md`` has the measured bound). A published version is
  never written: writes go to a copy (copy-on-write, like the Lucene engine), which
  :meth:`save` then moves into the new version directory.
- **server** (``url=`` or ``client=``): a collection on a Qdrant server or cluster, created with
  ``shard_number``, ``replication_factor``, ``write_consistency_factor`` and on-disk storage.
  A new index version is a new collection; the version directory holds only ``index.json``
  (collection and alias names, never credentials). The service searches the *alias*;
  :meth:`activate` points the alias at this index's collection in one atomic request, so
  requests in flight finish on the collection they started on.

On disk (one version directory): ``index.json``; embedded: ``shard/`` (Qdrant Edge's files).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from indexer.engines.base import Hit, IndexManifest, IndexUnavailable, as_query_row, check_rows
from indexer.engines.qdrant_backends import DATATYPES, EdgeBackend
from indexer.engines.qdrant_server import (
    ServerBackend,
    ServerLayout,
    check_identity,
    connect,
    identity,
)
from indexer.filters import RULE, WordFilter, check_rule, strong_words

ENGINE = "qdrant"
SHARD = "shard"
_NAMESPACE = uuid.UUID("7b1f3c52-6a0e-4f57-9d3c-1e5a2b8c4d60")  # fixed: point ids never move
_BATCH = 256  # points per upsert request
# Qdrant Edge keeps points in memory until they are flushed (measured: ~17 KB per LexVLA point,
# never released by optimize() alone), so a build flushes every FLUSH_EVERY points.
FLUSH_EVERY = 10_000


def point_id(image_id: str) -> str:
    """The point id of an image: stable across runs, machines and processes."""
    return str(uuid.uuid5(_NAMESPACE, image_id))


class QdrantIndex:
    """Sparse dot-product search in Qdrant (Edge in-process, or a server) behind the protocol."""

    def __init__(
        self,
        manifest: IndexManifest,
        backend: Any,
        shard_dir: Path | None = None,
        owned: bool = False,
    ):
        """Use :meth:`create` or :meth:`open`."""
        self.manifest = manifest
        self.backend = backend
        self.datatype = str(manifest.params.get("datatype", "float32"))
        self.optimize_every = int(manifest.params.get("optimize_every") or 0)
        self._shard_dir = shard_dir  # embedded: where the shard lives now
        self._owned = owned  # embedded: the shard is this object's own copy (not a published one)
        # embedded: a temporary directory this object made for its copy, removed by close() (or
        # when the object is collected unclosed); never a work or version directory
        self._scratch: weakref.finalize | None = None
        self._since_optimize = self._since_flush = 0

    @classmethod
    def create(
        cls,
        vocabulary_size: int,
        vocabulary_hash: str = "",
        checkpoint_id: str = "",
        threshold: float | None = None,
        *,
        datatype: str = "float32",
        on_disk: bool = True,
        optimize_every: int = 100_000,
        segment_points: int = 100_000,
        indexing_threshold_kb: int | None = None,
        workdir: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        tls_ca: str | None = None,
        collection: str | None = None,
        alias: str = "lexvla",
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        client: Any = None,
    ) -> QdrantIndex:
        """A new, empty index (embedded unless ``url`` or ``client`` names a server).

        ``workdir``: embedded, where the shard is built (a shard there already is resumed);
        default a new temporary directory. ``collection``: server, the collection to write
        (created unless it exists with the same vocabulary; default ``{alias}-<time>``).
        """
        if datatype not in DATATYPES:
            raise ValueError(f"datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}")
        params: dict[str, Any] = {
            "datatype": datatype,
            "on_disk": on_disk,
            "rule": dict(RULE),
            "optimize_every": optimize_every,
            "segment_points": segment_points,
        }
        manifest = IndexManifest(
            ENGINE, vocabulary_hash, vocabulary_size, checkpoint_id, threshold, params=params
        )
        if url is None and client is None:
            params["backend"] = "embedded"
            owned_root = Path(workdir) if workdir else scratch_dir()
            backend = EdgeBackend(
                owned_root / SHARD, datatype, on_disk, segment_points, indexing_threshold_kb
            )
            index = cls(manifest, backend, owned_root / SHARD, owned=True)
            if not workdir:
                index._own_scratch(owned_root)
            return index
        client, where = connect(url, api_key, timeout_s, tls_ca, client)
        collection = (
            collection
            or f"{alias}-{manifest.created.replace(':', '').replace('-', '')[:15].lower()}"
        )
        params.update(
            backend="server",
            collection=collection,
            alias=alias,
            url=url,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )
        server = ServerBackend(client, collection, where)
        layout = ServerLayout(
            shard_number, replication_factor, write_consistency_factor, on_disk, datatype
        )
        server.create(layout, {"lexvla": identity(manifest)})
        check_identity(server.metadata(), manifest, f"collection {collection!r}")
        return cls(manifest, server)

    # --- properties ---------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.datatype == "float32"

    @property
    def exact_rows(self) -> bool:
        return True  # Qdrant keeps the float32 vectors whatever the index's value type

    @property
    def ranks_by_rows(self) -> bool:
        return self.exact

    @property
    def server(self) -> bool:
        return self.manifest.params.get("backend") == "server"

    # --- writing ------------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        rows: sp.csr_matrix,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Add images; an id already in the index is a ValueError (use :meth:`upsert`)."""
        self.upsert(ids, rows, metadata, new_only=True)

    def upsert(
        self,
        ids: Sequence[str],
        rows: sp.csr_matrix,
        metadata: Sequence[dict[str, Any]] | None = None,
        new_only: bool = False,
    ) -> None:
        """Add or replace images (idempotent: the same rows twice change nothing)."""
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        self._writable()
        present = self.backend.existing([point_id(i) for i in ids]) if new_only and ids else set()
        if present:
            first = next(i for i in ids if point_id(i) in present)
            raise ValueError(f"image {first!r} is already in the index")
        self._upsert(ids, rows, metadata)

    def _upsert(
        self, ids: list[str], rows: sp.csr_matrix, metadata: Sequence[dict[str, Any]] | None
    ) -> None:
        rows.sort_indices()
        for start in range(0, len(ids), _BATCH):
            batch = range(start, min(len(ids), start + _BATCH))
            vectors, payloads = [], []
            for n in batch:
                a, b = rows.indptr[n], rows.indptr[n + 1]
                indices, data = rows.indices[a:b], rows.data[a:b]
                vectors.append((indices.tolist(), data.tolist()))
                extra = dict(metadata[n]) if metadata is not None else {}
                payloads.append(
                    {**extra, "id": ids[n], "words": strong_words(indices, data).tolist()}
                )
            self.backend.upsert([point_id(ids[n]) for n in batch], vectors, payloads)
            self._since_optimize += len(batch)
            self._since_flush += len(batch)
            if self._since_flush >= FLUSH_EVERY:  # unflushed points are held in memory
                self.backend.flush()
                self._since_flush = 0
            if self.optimize_every and self._since_optimize >= self.optimize_every:
                self.optimize()  # fold the mutable segment: bounded memory while building

    def delete(self, ids: Iterable[str]) -> int:
        pids = list(dict.fromkeys(point_id(str(i)) for i in ids))
        if not pids:
            return 0
        self._writable()
        present = self.backend.existing(pids)
        if present:
            self.backend.delete(sorted(present))
        return len(present)

    # --- reading ------------------------------------------------------------------------------
    def count(self) -> int:
        return self.backend.count()

    def search(
        self, query: sp.csr_matrix, k: int = 10, offset: int = 0, filters: WordFilter | None = None
    ) -> list[Hit]:
        row = as_query_row(query, self.manifest.vocabulary_size)
        return self.search_batch(row, k, offset, filters)[0]

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
    ) -> list[list[Hit]]:
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        if filters is not None:
            filters.check(self.manifest.vocabulary_size)
        queries = sp.csr_matrix(queries, dtype=np.float32)
        queries.sum_duplicates()
        sparse, which = [], []
        for n in range(queries.shape[0]):
            a, b = queries.indptr[n], queries.indptr[n + 1]
            keep = queries.data[a:b] > 0
            if keep.any():
                sparse.append(
                    (queries.indices[a:b][keep].tolist(), queries.data[a:b][keep].tolist())
                )
                which.append(n)
        results: list[list[Hit]] = [[] for _ in range(queries.shape[0])]
        if sparse:
            for n, hits in zip(which, self.backend.query(sparse, k, offset, filters), strict=True):
                results[n] = [(i, s) for i, s in hits if s > 0]
        return results

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        pids = [point_id(str(i)) for i in ids]
        found = self.backend.retrieve(list(dict.fromkeys(pids))) if pids else {}
        indptr, indices, data = [0], [], []
        for image_id, pid in zip(ids, pids, strict=True):
            if pid not in found:
                raise KeyError(f"image {image_id!r} is not in the index")
            cols, vals = found[pid]
            order = np.argsort(cols, kind="stable")
            indices.append(np.asarray(cols, dtype=np.int32)[order])
            data.append(np.asarray(vals, dtype=np.float32)[order])
            indptr.append(indptr[-1] + len(cols))
        v = self.manifest.vocabulary_size
        if not ids:
            return sp.csr_matrix((0, v), dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), indptr), shape=(len(ids), v)
        )

    # --- persistence --------------------------------------------------------------------------
    def optimize(self) -> None:
        """Merge and index pending segments now (a build calls it periodically by itself)."""
        self.backend.flush()
        self.backend.optimize()
        release_memory()
        self._since_optimize = self._since_flush = 0

    def save(self, path: str | Path) -> None:
        """Write the version directory: the shard moved into it (embedded), the manifest last."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if not self.server:
            self._writable()
            self.backend.optimize()
            self.backend.flush()
            self.backend.close()
            assert self._shard_dir is not None
            target = path / SHARD
            shutil.move(str(self._shard_dir), str(target))  # a rename on one filesystem
            with contextlib.suppress(OSError):  # the work or temporary directory, now empty
                self._shard_dir.parent.rmdir()
            self.backend = EdgeBackend(target)
            self._shard_dir, self._owned = target, False
            self._own_scratch(None)
        self.manifest.count, self.manifest.deleted = self.count(), 0
        self.manifest.save(path)

    def moved(self, path: Path) -> None:
        """The version directory this index was saved to was renamed to ``path`` (publish)."""
        if not self.server:
            self.backend.close()
            self._shard_dir = Path(path) / SHARD
            self.backend = EdgeBackend(self._shard_dir)

    def activate(self) -> str | None:
        """Server: point the alias at this collection (atomic); returns the previous collection."""
        if not self.server:
            return None
        return self.backend.point_alias(self.manifest.params["alias"])

    def close(self) -> None:
        """Close the shard; a temporary copy this object made (never a saved one) is removed."""
        self.backend.close()
        if self._scratch is not None:
            self._scratch()

    def _own_scratch(self, scratch: Path | None) -> None:
        """Make ``scratch`` the temporary directory removed with this object (None: keep all)."""
        if self._scratch is not None:
            self._scratch.detach()
        self._scratch = (
            None
            if scratch is None
            else weakref.finalize(self, shutil.rmtree, str(scratch), ignore_errors=True)
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        tls_ca: str | None = None,
        client: Any = None,
    ) -> Self:
        """Open a version directory; a server index connects (``url`` overrides the manifest's)."""
        path = Path(path)
        manifest = IndexManifest.load(path)
        if manifest.engine != ENGINE:
            raise ValueError(f"{path} holds a {manifest.engine!r} index, not a {ENGINE!r} one")
        check_rule(manifest.params, f"the index at {path}")
        if manifest.params.get("backend") != "server":
            return cls._open_embedded(manifest, path / SHARD)
        params = manifest.params
        url = url or params.get("url")
        if client is None and not url:
            raise ValueError(f"{path} is a Qdrant server index: give its URL (LEXVLA_QDRANT_URL)")
        client, where = connect(url, api_key, timeout_s, tls_ca, client)
        alias = params["alias"]
        probe = ServerBackend(client, params["collection"], where)
        if not probe.exists(alias):
            raise IndexUnavailable(
                f"{where} has no alias {alias!r} (published collection {params['collection']!r}); "
                "publish an index there first (`lexvla index build --engine qdrant --qdrant-url ...`)"
            )
        check_identity(probe.metadata(alias), manifest, f"the collection behind alias {alias!r}")
        backend = ServerBackend(client, params["collection"], where, read=alias)
        return cls(manifest, backend)

    @classmethod
    def attach(
        cls,
        collection: str,
        alias: str = "lexvla",
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        tls_ca: str | None = None,
        client: Any = None,
    ) -> Self:
        """A server collection built earlier (e.g. by sharded jobs), described by its metadata."""
        client, where = connect(url, api_key, timeout_s, tls_ca, client)
        backend = ServerBackend(client, collection, where)
        found = backend.metadata().get("lexvla")
        if not found:
            raise ValueError(f"collection {collection!r} was not made by `lexvla index build`")
        check_rule(found, f"collection {collection!r}")
        params = {
            "backend": "server",
            "collection": collection,
            "alias": alias,
            "url": url,
            "datatype": found.get("datatype", "float32"),
            "rule": dict(RULE),
        }
        manifest = IndexManifest(
            ENGINE,
            found["vocabulary_hash"],
            found["vocabulary_size"],
            found.get("checkpoint_id", ""),
            found.get("threshold"),
            params=params,
        )
        return cls(manifest, backend)

    @classmethod
    def _open_embedded(cls, manifest: IndexManifest, shard: Path) -> Self:
        try:
            return cls(manifest, EdgeBackend(shard), shard, owned=False)
        except Exception as exc:  # the shard is open in another process (its WAL is locked)
            if "WAL" not in str(exc):
                raise
        scratch = scratch_dir()
        shutil.copytree(shard, scratch / SHARD)
        index = cls(manifest, EdgeBackend(scratch / SHARD), scratch / SHARD, owned=True)
        index._own_scratch(scratch)
        return index

    def _writable(self) -> None:
        """Copy-on-write: a published shard is never modified in place."""
        if self.server or self._owned:
            return
        assert self._shard_dir is not None
        scratch = scratch_dir()
        self.backend.flush()
        self.backend.close()
        shutil.copytree(self._shard_dir, scratch / SHARD, ignore=shutil.ignore_patterns("*.lock"))
        self._shard_dir, self._owned = scratch / SHARD, True
        self._own_scratch(scratch)
        self.backend = EdgeBackend(scratch / SHARD)


def scratch_dir() -> Path:
    """A new temporary directory for a shard this process builds or copies."""
    return Path(tempfile.mkdtemp(prefix="lexvla-qdrant-"))


def release_memory() -> None:
    """Give freed heap back to the OS (glibc keeps an optimisation's buffers otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def disk_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (an index version or a shard), for benchmarks."""
    return sum(
        f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not os.path.islink(f)
    )
