"""The ``qdrant`` engine: exact sparse search in Qdrant, in-process (Qdrant Edge) or on a server
or cluster; ``docs/qdrant.md`` describes it.

Package map: ``index.py`` (:class:`~indexer.engines.qdrant.index.QdrantIndex`: the protocol over
either back end), ``backends.py`` (the embedded Qdrant Edge shard and what both back ends share),
``server.py`` (a server or cluster collection), ``points.py`` (rows to points and back),
``jobs.py`` (resumable builds from a corpus store; sharded jobs writing one collection, then
publishing it). This module declares the engine to the registry (:class:`QdrantEngine`: options
and hooks); it imports the index, and so Qdrant's libraries, only when one is built or opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from common.flags import flag_name
from indexer.engines.base import SearchIndex
from indexer.engines.engine import BuildHints, Built, Engine, EngineOptions
from indexer.engines.qdrant.backends import DATATYPES

if TYPE_CHECKING:
    from indexer.store import CorpusStore


class QdrantConnection(EngineOptions):
    """Where the server is (unset ``url``: embedded Qdrant Edge) and how to reach it."""

    internal: ClassVar[frozenset[str]] = frozenset({"client"})

    url: str | None = Field(
        default=None,
        description="Qdrant server or cluster URL (http://host:6333); unset: embedded Qdrant Edge",
    )
    api_key: SecretStr | None = Field(default=None, description="Qdrant API key")
    timeout_s: float = Field(default=5.0, gt=0, description="Qdrant request timeout")
    tls_ca: Path | None = Field(default=None, description="CA bundle for https")
    client: Any = Field(default=None, description="a qdrant_client.QdrantClient (in code only)")

    def connection(self) -> dict[str, Any]:
        """``url``, ``api_key``, ``timeout_s``, ``tls_ca``, ``client`` as the index takes them."""
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        tls = str(self.tls_ca) if self.tls_ca is not None else None
        return dict(
            url=self.url, api_key=key, timeout_s=self.timeout_s, tls_ca=tls, client=self.client
        )

    @property
    def server(self) -> bool:
        return bool(self.url) or self.client is not None


class QdrantOpenOptions(QdrantConnection):
    pass


class QdrantBuildOptions(QdrantConnection):
    internal: ClassVar[frozenset[str]] = frozenset(
        {"client", "workdir", "segment_points", "indexing_threshold_kb"}
    )

    timeout_s: float = Field(default=60.0, gt=0, description="Qdrant request timeout")
    collection: str | None = Field(
        default=None,
        description="server: the collection to write (sharded jobs share one); "
        "default <alias>-<time>, one per index version",
    )
    alias: str = Field(default="lexvla", description="server: the alias the service searches")
    datatype: str = Field(
        default="float32", description="value type of the sparse index: float32, float16, uint8"
    )
    on_disk: bool = Field(default=True, description="vectors, index and payload on disk")
    optimize_every: int = Field(
        default=100_000, ge=0, description="optimize() after this many upserts (bounded memory)"
    )
    shard_number: int | None = Field(default=None, ge=1, description="server: shards")
    replication_factor: int | None = Field(
        default=None, ge=1, description="server: copies of each shard"
    )
    write_consistency_factor: int | None = Field(
        default=None, ge=1, description="server: replicas that must acknowledge a write"
    )
    segment_points: int = Field(default=100_000, ge=1, description="embedded: points a segment")
    indexing_threshold_kb: int | None = Field(default=None, description="embedded: Qdrant's")
    workdir: Path | None = Field(default=None, description="embedded: where the shard is built")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"must be one of {', '.join(DATATYPES)}, got {value!r}")
        return value

    def create_options(self) -> dict[str, Any]:
        """Every option as :meth:`QdrantIndex.create` takes it."""
        plain = {
            k: getattr(self, k) for k in self.model_fields if k not in QdrantConnection.model_fields
        }
        return plain | self.connection()


class QdrantEngine(Engine):
    name = "qdrant"
    summary = "embedded Qdrant Edge, or a Qdrant server or cluster"
    build_options = QdrantBuildOptions
    open_options = QdrantOpenOptions

    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: QdrantBuildOptions,
        hints: BuildHints,
    ) -> SearchIndex:
        from indexer.engines.qdrant.index import QdrantIndex

        return QdrantIndex.create(
            vocabulary_size, vocabulary_hash, checkpoint_id, threshold, **options.create_options()
        )

    def open(self, version: Path, options: QdrantOpenOptions) -> SearchIndex:
        from indexer.engines.qdrant.index import QdrantIndex

        return QdrantIndex.open(version, **options.connection())

    def check_build(self, options: QdrantBuildOptions, sharded: bool) -> None:
        if sharded and options.server and not options.collection:
            raise ValueError(
                "sharded qdrant builds write one shared collection: give every shard the "
                f"same collection ({self._flag('collection')} NAME)"
            )

    def build(
        self,
        store: CorpusStore,
        index_dir: Path,
        options: QdrantBuildOptions,
        *,
        sharded: bool = False,
        progress: bool = False,
    ) -> Built:
        """Resumable upserts (:func:`~indexer.engines.qdrant.jobs.build_qdrant`); sharded jobs
        against a server write one shared collection and publish nothing."""
        from indexer.engines.qdrant.jobs import build_qdrant

        shared = sharded and options.server
        version, index = build_qdrant(
            store, index_dir, not shared, progress, **options.create_options()
        )
        if shared:
            return Built(None, {"qdrant_collection": index.manifest.params["collection"]})
        return Built(version)

    def publish_shared(self, index_dir: Path, options: QdrantBuildOptions) -> Path:
        """Publish the collection sharded jobs wrote and point the alias at it."""
        from indexer.engines.qdrant.jobs import publish_collection

        if not (options.server and options.collection):
            raise ValueError(f"publish needs {self._flag('url')} and {self._flag('collection')}")
        connection = options.connection()
        return publish_collection(index_dir, options.collection, alias=options.alias, **connection)

    def _flag(self, option: str) -> str:
        return flag_name(self.outside_name("build", option))


__all__ = ["QdrantEngine"]
