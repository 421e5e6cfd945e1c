"""Qdrant engine: exact sparse search in Qdrant, in-process (Qdrant Edge) or on a server/cluster.

One point per image: the sparse vector ``lex`` (vocabulary indices as dimensions, no IDF
modifier, so a score is the plain dot product), and a payload with the image ``id``, its strong
``words`` (:mod:`indexer.filters`: integer vocabulary indices, with a lookup index, which word
filters query), the extra keys the caller passes (the store's path, size, format) and the
image's metadata record under ``meta``, with a payload index per field of the registry given to
:meth:`QdrantIndex.declare_fields` (:mod:`indexer.engines.qdrant.conditions`), which metadata
conditions (``where``) query: Qdrant applies them, with the word filters, inside its search
(:mod:`indexer.engines.qdrant.points` turns rows into points and back). Point ids are UUIDs
derived from the image id (``uuid5``), so upserting the same images again changes nothing: a
re-run or resumed job is idempotent. ``add`` refuses ids already in the index (the protocol's rule);
``upsert`` is the idempotent write the indexing jobs use.

Value types (``datatype``): ``float32`` (scores are the float32 dot products: ``exact``),
``float16`` or ``uint8``: Qdrant's sparse index then keeps its weights in that type (uint8 with a
scale and offset per posting list, chosen by Qdrant, so no single scale exists to record), and
top-k is approximate; the service re-scores candidates exactly. The stored vectors stay float32
whatever the value type, so :meth:`vectors_of` returns the rows exactly as added.

Back ends (:mod:`indexer.engines.qdrant.backends`, :mod:`indexer.engines.qdrant.server`), the
same code above them:

- **embedded** (default): a Qdrant Edge shard in ``<version>/shard/``. ``on_disk`` keeps vectors,
  index and payload memory-mapped; the build calls ``optimize()`` every ``optimize_every``
  upserted points and bounds optimised segments to ``segment_points`` points, so memory during a
  build stays bounded (docs/results-indexing.md). A published version is never written: writes
  go to a copy, which :meth:`save` moves into the new version directory
  (:mod:`indexer.engines.qdrant.shard`).
- **server** (``url=`` or ``client=``): a collection on a Qdrant server or cluster, created with
  ``shard_number``, ``replication_factor``, ``write_consistency_factor`` and on-disk storage.
  A new index version is a new collection; the version directory holds only ``index.json``
  (collection and alias names, never credentials). The service searches the *alias*;
  :meth:`activate` points the alias at this index's collection in one atomic request, so
  requests in flight finish on the collection they started on.

On disk (one version directory): ``index.json``; embedded: ``shard/`` (Qdrant Edge's files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from indexer.engines.base import Hit, IndexManifest, SearchIndex, as_query_row, check_rows
from indexer.engines.qdrant.backends import DATATYPES, EdgeBackend, release_memory
from indexer.engines.qdrant.conditions import META, SCHEMA, meta_key, meta_payloads
from indexer.engines.qdrant.points import point_id, points, query_vectors, rows_of
from indexer.engines.qdrant.server import (
    ServerLayout,
    attach_collection,
    connect,
    create_collection,
    open_published,
)
from indexer.engines.qdrant.shard import SHARD, ShardHome, scratch_dir
from indexer.fields import Where, WhereError
from indexer.filters import RULE, WordFilter, check_rule
from indexer.metadata import FieldRegistry

ENGINE = "qdrant"
_BATCH = 256  # points per upsert request
# Qdrant Edge keeps points in memory until they are flushed (optimize() alone does not release
# them; docs/lab-notes.md), so a build flushes every FLUSH_EVERY points.
FLUSH_EVERY = 10_000


class QdrantIndex(SearchIndex):
    """Sparse dot-product search in Qdrant (Edge in-process, or a server) behind the protocol."""

    def __init__(self, manifest: IndexManifest, backend: Any, home: ShardHome | None = None):
        """Use :meth:`create` or :meth:`open`."""
        self.manifest = manifest
        self.backend = backend
        self.datatype = str(manifest.params.get("datatype", "float32"))
        self.optimize_every = int(manifest.params.get("optimize_every") or 0)
        self._home = home  # embedded: where the shard lives, and whether it is this index's copy
        self._since_optimize = self._since_flush = 0
        self._registry: FieldRegistry | None = None  # the field types of ``meta`` payloads

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
            "metadata": META,  # points carry their metadata record there (filters read it)
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
            home = ShardHome(
                owned_root / SHARD, owned=True, scratch=None if workdir else owned_root
            )
            return cls(manifest, backend, home)
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
        layout = ServerLayout(
            shard_number, replication_factor, write_consistency_factor, on_disk, datatype
        )
        return cls(manifest, create_collection(client, where, manifest, layout))

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
    def filters_metadata(self) -> bool:
        return True

    @property
    def server(self) -> bool:
        return self.manifest.params.get("backend") == "server"

    # --- writing ------------------------------------------------------------------------------
    def declare_fields(self, registry: FieldRegistry) -> None:
        """Index the ``meta`` payload by ``registry``'s fields (a payload index each) and type
        the records later upserts are given by it; call before writing records."""
        self._writable()
        for name in sorted(registry.fields):
            self.backend.index_payload(meta_key(name), SCHEMA[registry.type_of(name)])
        self._registry = registry

    def add(
        self,
        ids: Sequence[str],
        rows: sp.csr_matrix,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        records: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add images; an id already in the index is a ValueError (use :meth:`upsert`)."""
        self.upsert(ids, rows, metadata, new_only=True, records=records)

    def upsert(
        self,
        ids: Sequence[str],
        rows: sp.csr_matrix,
        metadata: Sequence[dict[str, Any]] | None = None,
        new_only: bool = False,
        *,
        records: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add or replace images (idempotent: the same rows twice change nothing).

        ``metadata``: extra payload keys per image; ``records``: each image's metadata record
        (None: none), which ``where`` conditions filter by (:meth:`declare_fields` first)."""
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        meta = meta_payloads(records, self._registry, len(ids))
        self._writable()
        present = self.backend.existing([point_id(i) for i in ids]) if new_only and ids else set()
        if present:
            first = next(i for i in ids if point_id(i) in present)
            raise ValueError(f"image {first!r} is already in the index")
        self._upsert(ids, rows, metadata, meta)

    def _upsert(
        self,
        ids: list[str],
        rows: sp.csr_matrix,
        metadata: Sequence[dict[str, Any]] | None,
        meta: Sequence[dict[str, Any] | None] | None,
    ) -> None:
        rows.sort_indices()
        for start in range(0, len(ids), _BATCH):
            batch = range(start, min(len(ids), start + _BATCH))
            self.backend.upsert(*points(ids, rows, metadata, batch, meta))
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
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        row = as_query_row(query, self.manifest.vocabulary_size)
        return self.search_batch(row, k, offset, filters, where=where)[0]

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        if where is not None and not where.empty and not self.manifest.params.get("metadata"):
            raise WhereError(
                "where",
                "this qdrant index was built without metadata in its points; rebuild it from "
                "the store (`lexvla index reindex`)",
            )
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        if filters is not None:
            filters.check(self.manifest.vocabulary_size)
        queries = sp.csr_matrix(queries, dtype=np.float32)
        queries.sum_duplicates()
        sparse, which = query_vectors(queries)
        results: list[list[Hit]] = [[] for _ in range(queries.shape[0])]
        if sparse:
            for n, hits in zip(
                which, self.backend.query(sparse, k, offset, filters, where), strict=True
            ):
                results[n] = [(i, s) for i, s in hits if s > 0]
        return results

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        pids = [point_id(str(i)) for i in ids]
        found = self.backend.retrieve(list(dict.fromkeys(pids))) if pids else {}
        return rows_of(ids, pids, found, self.manifest.vocabulary_size)

    # --- persistence --------------------------------------------------------------------------
    def optimize(self) -> bool:
        """Merge and index pending segments now (a build calls it periodically by itself; a
        server's optimiser runs by itself); True when points were written since the last time."""
        written = self._since_optimize > 0
        self.backend.flush()
        self.backend.optimize()
        release_memory()
        self._since_optimize = self._since_flush = 0
        return written and not self.server

    def save(self, path: str | Path) -> None:
        """Write the version directory: the shard moved into it (embedded), the manifest last."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._home is not None:
            self.backend = self._home.save(self.backend, path)
        self.manifest.count, self.manifest.deleted = self.count(), 0
        self.manifest.save(path)

    def moved(self, path: Path) -> None:
        """The version directory this index was saved to was renamed to ``path`` (publish)."""
        if self._home is not None:
            self.backend = self._home.moved(self.backend, Path(path))

    def activate(self) -> str | None:
        """Server: point the alias at this collection (atomic); returns the previous collection."""
        if not self.server:
            return None
        return self.backend.point_alias(self.manifest.params["alias"])

    def close(self) -> None:
        """Close the shard; a temporary copy this object made (never a saved one) is removed."""
        self.backend.close()
        if self._home is not None:
            self._home.close()

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
            return cls(manifest, *ShardHome.open(path / SHARD))
        params = manifest.params
        url = url or params.get("url")
        if client is None and not url:
            raise ValueError(f"{path} is a Qdrant server index: give its URL (LEXVLA_QDRANT_URL)")
        client, where = connect(url, api_key, timeout_s, tls_ca, client)
        return cls(manifest, open_published(client, where, manifest))

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
        return cls(*attach_collection(client, where, collection, alias, url))

    def _writable(self) -> None:
        """Copy-on-write: a published shard is never modified in place."""
        if self._home is not None:
            self.backend = self._home.writable(self.backend)
