"""The settings of one indexing job: :class:`IndexJob`, and the engine options it implies.

``lexvla index build|add`` generate their flags from :class:`IndexJob` (its field descriptions
are the help, its defaults the defaults; :mod:`model.flags`), and
:func:`indexer.runner.run_index_job` runs one. The ``qdrant_*`` fields are the ``qdrant``
engine's options; :func:`engine_options` turns them (from a job, or from the CLI's parsed
arguments) into the engine's ``create`` options, so every command that writes an index passes
them the same way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from indexer.decode import THUMBNAIL_SIZE
from indexer.engines import DEFAULT_ENGINE, ENGINES
from indexer.engines.qdrant_backends import DATATYPES
from indexer.metadata import check_collection, parse_declaration
from model.data import DEFAULT_MAX_PIXELS, SourceKind


class IndexJob(BaseModel):
    """Settings of one indexing run; ``lexvla index build|add`` flags are generated from it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="folder, .csv/.jsonl manifest, .tar shard(s), or a brace pattern of shards"
    )
    store: str = Field(description="corpus store directory (created if missing)")
    checkpoint: str = Field(description="LexVLA checkpoint: a directory or a Hugging Face hub id")
    source_kind: SourceKind = Field(default="auto", description="how to read --source")
    image_root: str | None = Field(
        default=None, description="folder a manifest's relative image paths start from"
    )
    device: str = Field(default="cpu", description="torch device for the image encoder")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="encoder precision (auto: bfloat16 on CUDA, float32 on CPU)"
    )
    batch_size: int = Field(default=32, ge=1, description="images per encoder call")
    chunk_size: int = Field(
        default=1024, ge=1, description="images per store shard and per resume unit"
    )
    decode_workers: int = Field(
        default=2, ge=0, description="processes decoding images (0: the job's own process)"
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="larger images are skipped"
    )
    thumbnails: bool = Field(default=True, description="store a JPEG thumbnail per image")
    thumbnail_size: int = Field(default=THUMBNAIL_SIZE, ge=16, description="longest side, px")
    skip_duplicate_content: bool = Field(
        default=False, description="skip an image whose bytes (sha256) are already stored"
    )
    limit: int | None = Field(default=None, ge=1, description="at most this many source items")
    index: str | None = Field(
        default=None, description="publish a search index here after the store is updated"
    )
    engine: str = Field(default=DEFAULT_ENGINE, description="index engine")
    progress: bool = Field(default=True, description="show a progress bar")
    shard_id: int = Field(
        default=0, ge=0, description="this process's slice: sha256(id) mod --num-shards"
    )
    num_shards: int = Field(default=1, ge=1, description="slices of the source in all")
    require_store: bool = Field(
        default=False, description="the store must exist already (what `index add` sets)"
    )
    draft_decode: bool = Field(
        default=True, description="decode JPEGs at reduced scale (DCT) when that is enough"
    )

    # --- metadata (indexer.metadata) --------------------------------------------------------------
    collection: str | None = Field(
        default=None,
        description="collection of images without a collection column/key (default: default)",
    )
    fields: list[str] = Field(
        default=[], description="metadata field types, NAME:TYPE (flag --field, repeatable)"
    )

    # --- engine "qdrant" ------------------------------------------------------------------------
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server or cluster URL (http://host:6333); unset: embedded Qdrant Edge",
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="Qdrant API key")
    qdrant_timeout_s: float = Field(default=60.0, gt=0, description="Qdrant request timeout")
    qdrant_tls_ca: str | None = Field(default=None, description="CA bundle for https")
    qdrant_collection: str | None = Field(
        default=None,
        description="server: the collection to write (sharded jobs share one); "
        "default <alias>-<time>, one per index version",
    )
    qdrant_alias: str = Field(
        default="lexvla", description="server: the alias the service searches"
    )
    qdrant_datatype: str = Field(
        default="float32", description="value type of the sparse index: float32, float16, uint8"
    )
    qdrant_on_disk: bool = Field(default=True, description="vectors, index and payload on disk")
    qdrant_optimize_every: int = Field(
        default=100_000, ge=0, description="optimize() after this many upserts (bounded memory)"
    )
    qdrant_shard_number: int | None = Field(default=None, ge=1, description="server: shards")
    qdrant_replication_factor: int | None = Field(
        default=None, ge=1, description="server: copies of each shard"
    )
    qdrant_write_consistency_factor: int | None = Field(
        default=None, ge=1, description="server: replicas that must acknowledge a write"
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown index engine {value!r}; known: {', '.join(ENGINES)}")
        return value

    @field_validator("collection")
    @classmethod
    def _collection_slug(cls, value: str | None) -> str | None:
        return None if value is None else check_collection(value)

    @field_validator("fields")
    @classmethod
    def _field_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_declaration(spec)
        return value

    @model_validator(mode="after")
    def _check_shard(self) -> IndexJob:
        if self.shard_id >= self.num_shards:
            raise ValueError(
                f"shard_id must be in 0..{self.num_shards - 1} (num_shards), got {self.shard_id}"
            )
        if self.qdrant_datatype not in DATATYPES:
            raise ValueError(f"qdrant_datatype must be one of {', '.join(DATATYPES)}")
        sharded_server = self.num_shards > 1 and self.index and self.qdrant_url
        if self.engine == "qdrant" and sharded_server and not self.qdrant_collection:
            raise ValueError(
                "sharded qdrant builds write one shared collection: give every shard the "
                "same qdrant_collection (--qdrant-collection NAME)"
            )
        return self

    def engine_options(self) -> dict[str, Any]:
        """Options for the engine's ``create`` (see :func:`engine_options`)."""
        return engine_options(self.engine, self)


def engine_options(engine: str, source: Any) -> dict[str, Any]:
    """The ``create`` options of ``engine`` from an object with ``qdrant_*`` attributes
    (an :class:`IndexJob`, or the CLI's parsed arguments)."""
    if engine != "qdrant":
        return {}
    key = getattr(source, "qdrant_api_key", None)
    options = {
        "datatype": source.qdrant_datatype,
        "on_disk": source.qdrant_on_disk,
        "optimize_every": source.qdrant_optimize_every,
        "url": source.qdrant_url,
        "api_key": key.get_secret_value() if isinstance(key, SecretStr) else key,
        "timeout_s": source.qdrant_timeout_s,
        "tls_ca": source.qdrant_tls_ca,
        "collection": source.qdrant_collection,
        "alias": source.qdrant_alias,
        "shard_number": source.qdrant_shard_number,
        "replication_factor": source.qdrant_replication_factor,
        "write_consistency_factor": source.qdrant_write_consistency_factor,
    }
    if not options["url"]:  # embedded: no server options
        return {k: options[k] for k in ("datatype", "on_disk", "optimize_every")}
    return options
