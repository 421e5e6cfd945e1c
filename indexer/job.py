"""The settings of one indexing job: :class:`IndexJob`, with its engine's build options.

``lexvla index build|add`` generate their flags from :class:`IndexJob` (its field descriptions
are the help, its defaults the defaults; :mod:`common.flags`) and from each registered engine's
build options (``--<engine>-<option>``), and :func:`indexer.runner.run_index_job` runs one. The
job names no engine: ``engine_options`` holds the chosen engine's options, checked against its
model (:mod:`indexer.engines.registry`); a flag's name (``qdrant_url=...``) is accepted as well
and folded into it, and an option of another engine, or a misspelt one, is refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.decode import THUMBNAIL_SIZE
from indexer.engines import DEFAULT_ENGINE, engine, names
from indexer.engines.registry import engine_names_in, split_options
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
    max_words: int | None = Field(
        default=None,
        ge=1,
        description="keep each image's K heaviest words after the threshold (default: all); "
        "a store keeps one budget",
    )
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

    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="the engine's build options (the --<engine>-<option> flags fill it)",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_engine_options(cls, data: Any) -> Any:
        """``qdrant_url=...`` (a flag's name) -> ``engine_options={"url": ...}``; another
        engine's option, or a misspelt one, is refused."""
        if not isinstance(data, dict):
            return data
        chosen = data.get("engine", DEFAULT_ENGINE)
        outside = engine_names_in(data, "build") - set(cls.model_fields)
        if not outside or chosen not in names():  # (an unknown engine: its own error)
            return data
        folded = split_options({k: data[k] for k in outside}, chosen, "build")
        rest = {k: v for k, v in data.items() if k not in outside}
        return rest | {"engine_options": {**data.get("engine_options", {}), **folded}}

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        engine(value)  # unknown: a one-line ValueError naming the known ones
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
        options = self.build_options()
        if self.index:
            engine(self.engine).check_build(options, self.num_shards > 1)
        return self

    def build_options(self) -> Any:
        """The engine's build options, checked (an unknown or misspelt one is refused)."""
        return engine(self.engine).options("build", self.engine_options)
