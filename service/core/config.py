"""Service settings: pydantic-settings, read from ``LEXVLA_*`` environment variables.

Every field is an environment variable with the ``LEXVLA_`` prefix (``LEXVLA_CHECKPOINT``,
``LEXVLA_INDEX``, ``LEXVLA_MAX_TOP_K``, ...) and a ``lexvla serve`` flag generated from the
field (``--max-top-k``; ``common.flags``), which overrides it. The descriptions are the flags'
help. Request limits
that appear in request schemas (``max_top_k``, ``max_offset``, ``max_query_chars``) are also
written into the app's OpenAPI document, so clients and the docs see the limits actually enforced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Hard ceilings: a deployment may lower these limits, never raise them past these values.
HARD_MAX_TOP_K = 1000
HARD_MAX_OFFSET = 100_000
HARD_MAX_QUERY_CHARS = 4000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEXVLA_", extra="ignore", frozen=True)

    # --- what to serve ------------------------------------------------------------------------
    checkpoint: Path | None = Field(
        default=None, description="LexVLA checkpoint: a directory or a Hugging Face hub id"
    )
    index: Path | None = Field(
        default=None,
        description="index directory (with CURRENT and versions/) or one version directory",
    )
    store: Path | None = Field(
        default=None,
        description="corpus store directory (image files, thumbnails, exact re-scoring)",
    )
    device: str = Field(default="cpu", description="torch device for the model")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="model weights dtype (default: as saved, float32)"
    )
    mmap: bool = Field(default=False, description="memory-map the memory engine's arrays")
    index_refresh_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often each process checks which index version to serve (CURRENT, or "
        "the version an admin pinned) and swaps it in",
    )
    optimize_after_s: float = Field(
        default=60.0,
        ge=0,
        description="after live writes, once no index version has been published for this "
        "long, rewrite the index in a batch build's shape (as `lexvla index optimize`); 0: never",
    )
    compact_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads one search may use in the compact engine (default: the cores "
        "this process may run on divided by the workers, at least 1)",
    )
    static_queries: bool = Field(
        default=True,
        description="on CUDA, encode query texts at static shapes captured as CUDA graphs "
        "(batch 1 and batch_size; ignored on the CPU)",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads (default: the cores divided by the workers)",
    )

    # --- a Qdrant server or cluster (indexes built with --engine qdrant --qdrant-url) ----------
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL, e.g. http://qdrant:6333 (default: the one the index "
        "was built with); unused by embedded Qdrant Edge indexes",
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="Qdrant API key")
    qdrant_timeout_s: float = Field(
        default=5.0, gt=0, description="Qdrant request timeout; past it a search answers 503"
    )
    qdrant_tls_ca: Path | None = Field(
        default=None, description="CA bundle to verify a Qdrant server's https certificate"
    )

    # --- network ------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port (0: any free port)")
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes on one port (more than 1: gunicorn with a listening "
        "socket per worker, SO_REUSEPORT); each loads its own model and maps the same index "
        "files. Keep 1 with a GPU model",
    )
    worker_timeout_s: int = Field(
        default=30,
        ge=1,
        description="with several workers, a worker whose event loop does not answer for this "
        "long is killed and replaced",
    )
    run_dir: Path | None = Field(
        default=None,
        description="folder the workers of one server share for their status and metrics "
        "(default: a new temporary folder per server)",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="an admin key for every collection, required by /admin/* (unset: admin "
        "endpoints only for admin keys of the keys file)",
    )
    keys_file: Path | None = Field(
        default=None,
        description="API keys file (lexvla keys add): when set, every request needs a key of "
        "it (or the api key), and sees only what that key may; re-read when it changes",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="log level of the service and uvicorn"
    )

    # --- request limits -----------------------------------------------------------------------
    max_top_k: int = Field(
        default=100, ge=1, le=HARD_MAX_TOP_K, description="largest top_k a request may ask"
    )
    max_offset: int = Field(
        default=10_000, ge=0, le=HARD_MAX_OFFSET, description="deepest page offset allowed"
    )
    max_query_chars: int = Field(
        default=500, ge=1, le=HARD_MAX_QUERY_CHARS, description="longest query text"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="JSON request bodies")
    max_upload_bytes: int = Field(default=10 << 20, ge=1024, description="uploaded query images")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="decoded size of an upload")

    # --- load -----------------------------------------------------------------------------------
    max_concurrency: int = Field(default=64, ge=1, description="requests in flight before 429")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of a 429, seconds")
    batch_size: int = Field(default=16, ge=1, description="text queries per model call")
    batch_wait_ms: float = Field(default=3.0, ge=0, description="how long a batch waits to fill")
    query_cache_size: int = Field(default=4096, ge=0, description="query vectors kept (LRU)")
    patch_cache_size: int = Field(
        default=8, ge=0, description="images whose patch vectors are kept"
    )
    search_threads: int = Field(default=2, ge=1, description="threads running index searches")
    gc_freeze: bool = Field(
        default=True,
        description="once loaded (and after each index swap), move every object into Python's "
        "permanent generation (gc.freeze): full collections then skip the model and index, "
        "which otherwise stall the event loop for 100-300 ms at a time",
    )
    worker_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="nice levels the search and model threads run below the event loop "
        "(Linux; 0: same priority)",
    )
    bind_candidates: int = Field(
        default=20,
        ge=1,
        le=200,
        description="lexical hits a 'bind' search re-ranks by where their words are",
    )
    bind_cache_size: int = Field(
        default=4096,
        ge=0,
        description="bound scores kept (one per image and query, for bind's re-ranking)",
    )
    rescore_factor: int = Field(
        default=4, ge=1, description="candidates per hit for approximate engines"
    )
    exact_scores: bool = Field(
        default=True,
        description="re-score the hits of approximate engines (compact, Lucene, Qdrant with "
        "float16/uint8) from the corpus store's float32 rows; false: from the engine's own rows "
        "(quantised: scores within the engine's error bound, still the exact sum of their "
        "contributions), so the store need not stay in memory (for millions of images)",
    )
    warmup: bool = Field(default=True, description="run one query before reporting ready")
