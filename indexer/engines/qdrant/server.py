"""The ``qdrant`` engine's server back end: a Qdrant server or cluster through ``qdrant-client``.

:class:`ServerBackend` writes one collection and searches an alias (also in qdrant-client's local
mode, ``QdrantClient(":memory:")``, the tests' stand-in for a server). A server that refuses the
connection, times out or refuses the API key raises
:class:`~indexer.engines.base.IndexUnavailable` with a message naming the URL and the cause; every
other server error is re-raised as is. A collection records what it holds in its metadata
(:func:`identity`), checked before anything is written to it or served from it. The engine
reaches a collection in one of three ways: :func:`create_collection` (a new index),
:func:`open_published` (a published index, searched through its alias) and
:func:`attach_collection` (one that sharded jobs built, to be published).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from indexer.engines.base import IndexManifest, IndexUnavailable
from indexer.engines.qdrant.backends import ID, INSTALL_HINT, VECTOR, WORDS, Hit, Sparse
from indexer.engines.qdrant.conditions import build_filter, client_builders
from indexer.fields import Where
from indexer.filters import RULE, WordFilter, check_rule
from model.vocabulary import VocabularyMismatchError

T = TypeVar("T")


@dataclass(frozen=True)
class QdrantConnection:
    """Where a Qdrant server is and how to talk to it (never written to a manifest)."""

    url: str
    api_key: str | None = None
    timeout_s: float = 5.0
    tls_ca: str | None = None  # a CA bundle for https; None: the system's

    def client(self) -> Any:
        try:
            from qdrant_client import QdrantClient
        except ImportError as exc:
            raise ImportError(f"qdrant-client is not installed; {INSTALL_HINT}") from exc
        options: dict[str, Any] = {}
        if self.tls_ca:
            options["verify"] = self.tls_ca
        # check_compatibility would call the server while constructing, before any timeout
        return QdrantClient(
            url=self.url,
            api_key=self.api_key,
            timeout=max(1, round(self.timeout_s)),
            check_compatibility=False,
            **options,
        )


@dataclass(frozen=True)
class ServerLayout:
    """How a new collection is laid out over a cluster (Qdrant's own creation options)."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk: bool = True
    datatype: str = "float32"


class ServerBackend:
    """A collection (written to) and an alias (searched) on a Qdrant server or cluster."""

    def __init__(
        self,
        client: Any,
        collection: str,
        where: str = "the Qdrant server",
        read: str | None = None,
    ):
        """Writes go to ``collection``; searches, reads and counts to ``read`` (an alias)."""
        from qdrant_client import models

        self.client, self.collection, self.where, self.m = client, collection, where, models
        self.read = read or collection

    # errors ---------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call; connection trouble becomes IndexUnavailable."""
        with unavailable_as_error(self.where, what):
            return fn()

    # collections and aliases ----------------------------------------------------------------
    def create(self, layout: ServerLayout, metadata: dict[str, Any]) -> None:
        """Create the collection (sparse ``lex``, payload indexes) unless it exists."""
        m = self.m
        if self.call(
            "checking the collection", lambda: self.client.collection_exists(self.collection)
        ):
            return
        datatype = {
            "float32": m.Datatype.FLOAT32,
            "float16": m.Datatype.FLOAT16,
            "uint8": m.Datatype.UINT8,
        }[layout.datatype]
        sparse = {
            VECTOR: m.SparseVectorParams(
                index=m.SparseIndexParams(on_disk=layout.on_disk, datatype=datatype)
            )
        }
        self.call(
            "creating the collection",
            lambda: self.client.create_collection(
                self.collection,
                sparse_vectors_config=sparse,
                shard_number=layout.shard_number,
                replication_factor=layout.replication_factor,
                write_consistency_factor=layout.write_consistency_factor,
                on_disk_payload=layout.on_disk,
                metadata=metadata,
            ),
        )
        with warnings.catch_warnings():  # local mode warns that payload indexes do nothing there
            warnings.simplefilter("ignore", UserWarning)
            for name, kind in (
                (WORDS, m.PayloadSchemaType.INTEGER),
                (ID, m.PayloadSchemaType.KEYWORD),
            ):
                self._payload_index(name, kind)

    def _payload_index(self, name: str, kind: Any) -> None:
        self.call(
            "creating a payload index",
            lambda: self.client.create_payload_index(self.collection, name, kind, wait=True),
        )

    def index_payload(self, key: str, kind: str) -> None:
        """A payload index on ``key`` (``kind``: keyword, float or geo)."""
        with warnings.catch_warnings():  # local mode warns that payload indexes do nothing there
            warnings.simplefilter("ignore", UserWarning)
            self._payload_index(key, getattr(self.m.PayloadSchemaType, kind.upper()))

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        """The metadata a collection (or the one an alias names) was created with."""
        info = self.call(
            "reading the collection", lambda: self.client.get_collection(name or self.collection)
        )
        return dict(info.config.metadata or {})

    def exists(self, name: str) -> bool:
        aliases = self.call("listing aliases", lambda: self.client.get_aliases()).aliases
        if any(a.alias_name == name for a in aliases):
            return True
        return bool(
            self.call("checking the collection", lambda: self.client.collection_exists(name))
        )

    def point_alias(self, alias: str) -> str | None:
        """Make ``alias`` name this collection, atomically; returns the collection it named."""
        m = self.m
        aliases = self.call("listing aliases", lambda: self.client.get_aliases()).aliases
        previous = next((a.collection_name for a in aliases if a.alias_name == alias), None)
        operations: list[Any] = []
        if previous is not None:
            operations.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias)))
        operations.append(
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name=self.collection, alias_name=alias)
            )
        )
        # one request: Qdrant applies the list atomically, so a query never sees no alias
        self.call("swapping the alias", lambda: self.client.update_collection_aliases(operations))
        return previous

    # points -----------------------------------------------------------------------------------
    def upsert(
        self, pids: Sequence[str], vectors: Sequence[Sparse], payloads: Sequence[dict]
    ) -> None:
        m = self.m
        points = [
            m.PointStruct(id=pid, vector={VECTOR: m.SparseVector(indices=i, values=v)}, payload=p)
            for pid, (i, v), p in zip(pids, vectors, payloads, strict=True)
        ]
        self.call(
            "upserting points", lambda: self.client.upsert(self.collection, points, wait=True)
        )

    def delete(self, pids: Sequence[str]) -> None:
        selector = self.m.PointIdsList(points=list(pids))
        self.call(
            "deleting points", lambda: self.client.delete(self.collection, selector, wait=True)
        )

    def existing(self, pids: Sequence[str]) -> set[str]:
        found = self.call(
            "reading points",
            lambda: self.client.retrieve(
                self.collection, list(pids), with_payload=False, with_vectors=False
            ),
        )
        return {str(r.id) for r in found}

    def retrieve(self, pids: Sequence[str]) -> dict[str, Sparse]:
        found = self.call(
            "reading vectors",
            lambda: self.client.retrieve(
                self.read, list(pids), with_payload=False, with_vectors=[VECTOR]
            ),
        )
        return {
            str(r.id): (list(r.vector[VECTOR].indices), list(r.vector[VECTOR].values))
            for r in found
        }

    def query(
        self,
        queries: Sequence[Sparse],
        limit: int,
        offset: int,
        filters: WordFilter | None,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        m = self.m
        condition = build_filter(client_builders(m), filters, where)
        requests = [
            m.QueryRequest(
                query=m.SparseVector(indices=i, values=v),
                using=VECTOR,
                limit=limit,
                offset=offset,
                filter=condition,
                with_payload=[ID],
            )
            for i, v in queries
        ]
        found = self.call("searching", lambda: self.client.query_batch_points(self.read, requests))
        return [[(p.payload[ID], float(p.score)) for p in r.points] for r in found]

    def count(self) -> int:
        found = self.call("counting points", lambda: self.client.count(self.read, exact=True))
        return int(found.count)

    def flush(self) -> None:  # upserts wait for the server's acknowledgement
        pass

    def optimize(self) -> None:  # the server's optimiser runs by itself
        pass

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def unavailable_as_error(where: str, what: str) -> Iterator[None]:
    """Connection refused, timeouts and 401/403 from a Qdrant server -> IndexUnavailable."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code in (401, 403):
            raise IndexUnavailable(
                f"{where} refused the API key ({exc.status_code}) while {what}; "
                "check LEXVLA_QDRANT_API_KEY (or --qdrant-api-key)"
            ) from None
        if exc.status_code is not None and exc.status_code >= 500:
            raise IndexUnavailable(f"{where} failed while {what} ({exc.status_code})") from None
        raise
    except (ResponseHandlingException, httpx.TransportError, TimeoutError, ConnectionError) as exc:
        cause = exc.source if isinstance(exc, ResponseHandlingException) else exc
        kind = (
            "timed out"
            if isinstance(cause, httpx.TimeoutException | TimeoutError)
            else "is unreachable"
        )
        raise IndexUnavailable(
            f"{where} {kind} while {what} ({type(cause).__name__}: {cause}); check that it runs and "
            "LEXVLA_QDRANT_URL (or --qdrant-url), and LEXVLA_QDRANT_TIMEOUT_S for slow servers"
        ) from None


def connect(
    url: str | None, api_key: str | None, timeout_s: float, tls_ca: str | None, client: Any
) -> tuple[Any, str]:
    """A client (the one given, e.g. local mode, or one for ``url``) and how errors name it."""
    connection = QdrantConnection(url or "local", api_key, timeout_s, tls_ca)
    return (
        client if client is not None else connection.client()
    ), f"the Qdrant server at {connection.url}"


def identity(manifest: IndexManifest) -> dict[str, Any]:
    """What a collection records about the index it holds (its metadata)."""
    return {
        "engine": "qdrant",
        "vocabulary_hash": manifest.vocabulary_hash,
        "vocabulary_size": manifest.vocabulary_size,
        "checkpoint_id": manifest.checkpoint_id,
        "threshold": manifest.threshold,
        "rule": dict(RULE),
        "datatype": manifest.params.get("datatype"),
        "metadata": manifest.params.get("metadata"),
    }


def check_identity(metadata: dict[str, Any], manifest: IndexManifest, what: str) -> None:
    found = metadata.get("lexvla") or {}
    if found.get("vocabulary_hash") != manifest.vocabulary_hash:
        raise VocabularyMismatchError(
            f"vocabulary mismatch: {what} holds vectors of vocabulary "
            f"{str(found.get('vocabulary_hash'))[:12]}, this index uses "
            f"{manifest.vocabulary_hash[:12]}; use another collection name (--qdrant-collection)"
        )
    check_rule(found, what)


# --- a collection as an index -----------------------------------------------------------------
def create_collection(
    client: Any, where: str, manifest: IndexManifest, layout: ServerLayout
) -> ServerBackend:
    """The collection a new index writes (``manifest.params["collection"]``), created with
    ``layout`` unless it exists; refused when it holds vectors of another vocabulary."""
    collection = manifest.params["collection"]
    server = ServerBackend(client, collection, where)
    server.create(layout, {"lexvla": identity(manifest)})
    check_identity(server.metadata(), manifest, f"collection {collection!r}")
    return server


def open_published(client: Any, where: str, manifest: IndexManifest) -> ServerBackend:
    """A published server index: writes go to its collection, searches to its alias; refused
    when the alias does not exist or names a collection of another vocabulary."""
    params = manifest.params
    alias = params["alias"]
    probe = ServerBackend(client, params["collection"], where)
    if not probe.exists(alias):
        raise IndexUnavailable(
            f"{where} has no alias {alias!r} (published collection {params['collection']!r}); "
            "publish an index there first (`lexvla index build --engine qdrant --qdrant-url ...`)"
        )
    check_identity(probe.metadata(alias), manifest, f"the collection behind alias {alias!r}")
    return ServerBackend(client, params["collection"], where, read=alias)


def attach_collection(
    client: Any, where: str, collection: str, alias: str, url: str | None
) -> tuple[IndexManifest, ServerBackend]:
    """A collection built earlier (e.g. by sharded jobs) and the manifest its metadata
    (:func:`identity`) describes, to be published under ``alias``."""
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
        "metadata": found.get("metadata"),
    }
    manifest = IndexManifest(
        "qdrant",
        found["vocabulary_hash"],
        found["vocabulary_size"],
        found.get("checkpoint_id", ""),
        found.get("threshold"),
        params=params,
    )
    return manifest, backend
