"""The stores under the ``qdrant`` engine, and the embedded one: Qdrant Edge in-process.

:class:`EdgeBackend` drives ``qdrant_edge.EdgeShard`` (the Qdrant engine as a library, files in
one directory); :class:`~indexer.engines.qdrant.server.ServerBackend` drives a Qdrant server or
cluster. Both expose the same small surface (upsert, delete, existing, retrieve, query, count,
flush, optimize) in plain Python types, so :mod:`indexer.engines.qdrant.index` is written once, and
both build the same filter (:func:`~indexer.engines.qdrant.conditions.build_filter`) from a
:class:`~indexer.filters.WordFilter` and metadata conditions: the ``words`` payload (integer
vocabulary indices of the image's strong words, with a lookup index) must contain every
required word (``must``) and none of the excluded ones (``must_not`` any), and the ``meta``
payload must pass every condition.

Where an embedded index's shard lives (copy-on-write) is :mod:`indexer.engines.qdrant.shard`'s.
:func:`release_memory` gives the heap an optimisation freed back to the OS, and
:func:`disk_bytes` measures a shard or version on disk (for benchmarks).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexer.engines.qdrant.conditions import WORDS, build_filter, edge_builders
from indexer.fields import Where
from indexer.filters import WordFilter

VECTOR = "lex"  # the one sparse vector of every point
ID = "id"  # payload: the image id
DATATYPES = ("float32", "float16", "uint8")
INSTALL_HINT = (
    "install the index extra: pip install 'lexvla[index]' (qdrant-edge-py, qdrant-client)"
)
Sparse = tuple[list[int], list[float]]
Hit = tuple[str, float]


# --- Qdrant Edge ------------------------------------------------------------------------------
class EdgeBackend:
    """One Qdrant Edge shard in a directory (created, or loaded when it holds one)."""

    def __init__(
        self,
        path: Path,
        datatype: str = "float32",
        on_disk: bool = True,
        segment_points: int = 100_000,
        indexing_threshold_kb: int | None = None,
    ):
        self.path = Path(path)
        self.qe = _edge_module()
        qe = self.qe
        if (self.path / "edge_config.json").is_file():
            self.shard = qe.EdgeShard.load(str(self.path))
            return
        params = qe.EdgeSparseVectorParams(
            on_disk=on_disk, datatype=getattr(qe.VectorStorageDatatype, datatype.capitalize())
        )
        # bounded segments: an optimised segment of at most ~segment_points LexVLA rows (~8 KB
        # each), so building one never holds more than that in memory
        # (indexing_threshold_kb: segments above it get the sparse index; Qdrant's default 10 MB)
        optimizers = qe.EdgeOptimizersConfig(
            max_segment_size=segment_points * 8, indexing_threshold=indexing_threshold_kb
        )
        config = qe.EdgeConfig(
            sparse_vectors={VECTOR: params}, on_disk_payload=on_disk, optimizers=optimizers
        )
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard = qe.EdgeShard.create(str(self.path), config)
        self.shard.update(
            qe.UpdateOperation.create_field_index(WORDS, qe.PayloadSchemaType.Integer)
        )
        self.shard.update(qe.UpdateOperation.create_field_index(ID, qe.PayloadSchemaType.Keyword))

    def index_payload(self, key: str, kind: str) -> None:
        """A payload index on ``key`` (``kind``: keyword, float or geo)."""
        schema = getattr(self.qe.PayloadSchemaType, kind.capitalize())
        self.shard.update(self.qe.UpdateOperation.create_field_index(key, schema))

    def upsert(
        self, pids: Sequence[str], vectors: Sequence[Sparse], payloads: Sequence[dict]
    ) -> None:
        qe = self.qe
        points = [
            qe.Point(pid, {VECTOR: qe.SparseVector(i, v)}, payload)
            for pid, (i, v), payload in zip(pids, vectors, payloads, strict=True)
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, pids: Sequence[str]) -> None:
        self.shard.update(self.qe.UpdateOperation.delete_points(list(pids)))

    def existing(self, pids: Sequence[str]) -> set[str]:
        return {str(r.id) for r in self.shard.retrieve(list(pids), False, False)}

    def retrieve(self, pids: Sequence[str]) -> dict[str, Sparse]:
        out = {}
        for record in self.shard.retrieve(list(pids), False, [VECTOR]):
            vector = record.vector[VECTOR]
            out[str(record.id)] = (list(vector.indices), list(vector.values))
        return out

    def query(
        self,
        queries: Sequence[Sparse],
        limit: int,
        offset: int,
        filters: WordFilter | None,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        qe = self.qe
        condition = build_filter(edge_builders(qe), filters, where)
        requests = [
            qe.QueryRequest(
                limit=limit,
                offset=offset,
                filter=condition,
                with_payload=[ID],
                query=qe.Query.Nearest(qe.SparseVector(i, v), using=VECTOR),
            )
            for i, v in queries
        ]
        found = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(p.payload[ID], float(p.score)) for p in hits] for hits in found]

    def count(self) -> int:
        return int(self.shard.count(self.qe.CountRequest(exact=True)))

    def flush(self) -> None:
        self.shard.flush()

    def optimize(self) -> None:
        self.shard.optimize()

    def close(self) -> None:
        self.shard.close()


def _edge_module() -> Any:
    try:
        import qdrant_edge
    except ImportError as exc:
        raise ImportError(f"qdrant-edge-py is not installed; {INSTALL_HINT}") from exc
    return qdrant_edge


# --- what Qdrant Edge costs -------------------------------------------------------------------
def release_memory() -> None:
    """Give freed heap back to the OS (glibc keeps an optimisation's buffers otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def disk_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (an index version or a shard), for benchmarks."""
    return sum(
        f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not os.path.islink(f)
    )
