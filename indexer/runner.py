"""The indexing job: source -> decode -> encode -> corpus store -> published search index.

Reader, encoder and writer are separate steps driven by :func:`run_index_job` (clip-retrieval's
shape). The source is cut into *chunks* of ``chunk_size`` consecutive items; each chunk becomes
one store shard, committed together with its skipped files and a ``done`` marker
(:mod:`indexer.store`). A killed job run again with the same source and chunk size skips the
chunks marked done, so it resumes exactly: nothing encoded twice, nothing lost. Images whose id
is already live in the store are never encoded again either, so re-running a job on a folder
that has grown indexes only the new images (incremental indexing), whatever the chunking.

Within a chunk, images are decoded (threads; Pillow releases the GIL) and encoded
``batch_size`` at a time, so memory holds one batch of decoded images, not a chunk.

Sharded builds (one process per GPU or machine). ``shard_id=i, num_shards=n`` keeps the source
items whose id hashes to ``i`` (``sha256(id) mod n``, after ``limit``), so the ``n`` slices are
disjoint, cover the source, and do not move when the source grows or the job restarts (a
position-based split would shift every later item when one file is inserted). Each shard writes
its **own store** (pass a different ``--store`` per shard, e.g. ``corpus/parts/shard-0``); its
done keys name the shard, so resuming works per shard exactly as for an unsharded job. The parts
are then combined without re-encoding by :func:`indexer.merge.merge_stores`
(``lexvla index merge``). ``require_store`` is ``lexvla index add``: incremental indexing into
a store that must already exist. ``draft_decode=False`` turns off JPEG draft-mode decoding
(decode at full size, then resize), for benchmarks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from indexer.decode import (
    DEFAULT_MAX_PIXELS,
    THUMBNAIL_SIZE,
    Decoded,
    ImageInfo,
    Skipped,
    decode_item,
    thumbnail_jpeg,
)
from indexer.engines import engine_class, publish
from indexer.engines.qdrant_backends import DATATYPES
from indexer.sources import SourceItem, SourceKind, iter_source
from indexer.store import CorpusStore
from model.sparsify import default_threshold

log = logging.getLogger(__name__)


class IndexJob(BaseModel):
    """Settings of one indexing run (the CLI is a thin layer over this)."""

    model_config = ConfigDict(extra="forbid")

    source: str  # folder, .csv/.jsonl manifest, .tar shard(s) or a brace pattern of shards
    store: str  # corpus store directory (created if missing)
    checkpoint: str  # LexVLA checkpoint directory
    source_kind: SourceKind = "auto"
    device: str = "cpu"
    batch_size: int = Field(default=32, ge=1)
    chunk_size: int = Field(default=1024, ge=1)  # images per store shard and per resume unit
    decode_workers: int = Field(default=2, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    thumbnails: bool = True
    thumbnail_size: int = Field(default=THUMBNAIL_SIZE, ge=16)
    skip_duplicate_content: bool = False  # skip an image whose bytes (sha256) are already stored
    limit: int | None = Field(default=None, ge=1)  # at most this many source items
    index: str | None = None  # publish a search index here after the store is updated
    engine: str = "memory"
    progress: bool = True
    shard_id: int = Field(default=0, ge=0)  # this process's slice: sha256(id) mod num_shards
    num_shards: int = Field(default=1, ge=1)
    require_store: bool = False  # `index add`: the store must exist already
    draft_decode: bool = True  # JPEG draft mode (decode at reduced scale) when it is enough

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


@dataclass
class JobReport:
    indexed: int = 0
    skipped: int = 0
    already_stored: int = 0
    chunks_done_before: int = 0
    chunks_written: int = 0
    index_version: str | None = None
    qdrant_collection: str | None = None  # sharded qdrant jobs: the collection they wrote
    reasons: dict[str, int] = field(default_factory=dict)


def run_index_job(job: IndexJob, model: Any | None = None) -> JobReport:
    """Encode the source's new images into the store (resumably), then publish an index."""
    if model is None:
        from model import LexVLA

        model = LexVLA.from_pretrained(job.checkpoint, device=job.device)
    if job.require_store and not (Path(job.store) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"no corpus store at {job.store}: `index add` adds to an existing store; "
            "use `index build` to create one"
        )
    model.eval()
    store = open_store(job.store, model)
    report = JobReport()
    try:
        items = iter_source(job.source, job.source_kind)
        if job.limit is not None:
            items = islice(items, job.limit)
        if job.num_shards > 1:
            items = (it for it in items if shard_of(it.id, job.num_shards) == job.shard_id)
        chunks = _chunks(items, job.chunk_size)
        prefix = _job_prefix(job)
        for number, items in _progress(chunks, job.progress):
            # the key names the chunk's exact ids: a chunk cut differently (a --limit, a source
            # that grew) is never taken for done; its stored images are skipped by id instead
            ids_digest = hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()
            key = f"{prefix}/chunk-{number:06d}-{ids_digest[:12]}"
            if store.is_done(key):
                report.chunks_done_before += 1
                continue
            _index_chunk(job, model, store, items, key, report)
            report.chunks_written += 1
        if job.index:
            if job.engine == "qdrant" and job.num_shards > 1 and job.qdrant_url:
                from indexer.qdrant_jobs import build_qdrant

                _, written = build_qdrant(
                    store, job.index, False, job.progress, **job.engine_options()
                )
                report.qdrant_collection = written.manifest.params["collection"]
            else:
                version = build_index(store, job.index, job.engine, **job.engine_options())
                report.index_version = version.name
    finally:
        store.close()
    return report


def open_store(path: str | Path, model: Any) -> CorpusStore:
    """Open the store made with this checkpoint, or create it; refuse another checkpoint's."""
    vocabulary = model.vocabulary
    if (Path(path) / "manifest.json").exists():
        store = CorpusStore.open(path, expected_vocabulary=vocabulary)
        stored = store.manifest["checkpoint_id"]
        if stored != model.checkpoint_id:
            store.close()
            raise ValueError(
                f"the corpus store {path} holds vectors of checkpoint {stored!r}, not "
                f"{model.checkpoint_id!r}; vectors of two checkpoints cannot be searched together. "
                "Use a new store for this checkpoint."
            )
        return store
    sparsity = model.config.sparsity
    threshold = sparsity.threshold
    if threshold is None:
        threshold = default_threshold(len(vocabulary))
    return CorpusStore.create(path, vocabulary, model.checkpoint_id, threshold, sparsity.top_k)


def build_index(
    store: CorpusStore, index_dir: str | Path, engine: str = "memory", **options: Any
) -> Path:
    """Build an index of every live image of the store and publish it as a new version.

    The qdrant engine builds resumably (:func:`indexer.qdrant_jobs.build_qdrant`).
    """
    if engine == "qdrant":
        from indexer.qdrant_jobs import build_qdrant

        version, _ = build_qdrant(store, index_dir, **options)
        assert version is not None
        return version
    manifest = store.manifest
    index = engine_class(engine).create(
        len(store.vocabulary),
        store.vocabulary.hash,
        manifest["checkpoint_id"],
        manifest["threshold"],
        **options,
    )
    for ids, rows in store.iter_shards():
        index.add(ids, rows)
    return publish(index, index_dir)


# --- steps ------------------------------------------------------------------------------------
def _index_chunk(
    job: IndexJob,
    model: Any,
    store: CorpusStore,
    items: list[SourceItem],
    key: str,
    report: JobReport,
) -> None:
    fresh = [it for it in items if it.error is not None or not store.has_id(it.id)]
    report.already_stored += len(items) - len(fresh)
    ids: list[str] = []
    rows: list[sp.csr_matrix] = []
    records: list[ImageInfo] = []
    thumbs: list[bytes | None] = []
    skipped: list[Skipped] = []
    draft = max(model.config.image.image_size, job.thumbnail_size) if job.draft_decode else None
    with ThreadPoolExecutor(job.decode_workers) as pool:
        for start in range(0, len(fresh), job.batch_size):
            batch = fresh[start : start + job.batch_size]
            decoded: list[Decoded] = []
            for result in pool.map(lambda it: decode_item(it, job.max_pixels, draft), batch):
                if isinstance(result, Skipped):
                    skipped.append(result)
                elif job.skip_duplicate_content and store.has_sha256(result.info.sha256):
                    report.already_stored += 1
                else:
                    decoded.append(result)
            if not decoded:
                continue
            rows.append(_encode(model, [d.image for d in decoded]))
            ids.extend(d.info.id for d in decoded)
            records.extend(d.info for d in decoded)
            thumbs.extend(
                thumbnail_jpeg(d.image, job.thumbnail_size) if job.thumbnails else None
                for d in decoded
            )
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
        reason = s.reason.split(":")[0]
        report.reasons[reason] = report.reasons.get(reason, 0) + 1
    vocab_size = len(store.vocabulary)
    matrix = sp.vstack([sp.csr_matrix((0, vocab_size), dtype=np.float32), *rows], format="csr")
    store.append_shard(ids, matrix, records, thumbs, skipped=skipped, done_key=key)
    report.indexed += len(ids)
    report.skipped += len(skipped)


def _encode(model: Any, images: list[Any]) -> sp.csr_matrix:
    import torch

    with torch.inference_mode():
        dense = model.encode_pil(images)
    return sp.csr_matrix(model.sparsify(dense), dtype=np.float32)


def shard_of(image_id: str, num_shards: int) -> int:
    """The shard an id belongs to: stable across runs, machines and Python hash seeds."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % num_shards


def _chunks(items: Iterator[SourceItem], size: int) -> Iterator[tuple[int, list[SourceItem]]]:
    number = 0
    while chunk := list(islice(items, size)):
        yield number, chunk
        number += 1


def _job_prefix(job: IndexJob) -> str:
    """Done keys name the source and chunking, so another source or chunk size never matches."""
    source = str(Path(job.source).resolve()) if "{" not in job.source else job.source
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    shard = f"/s{job.shard_id}of{job.num_shards}" if job.num_shards > 1 else ""
    return f"{digest}/c{job.chunk_size}{shard}"


def _progress(chunks: Iterator[tuple[int, list[SourceItem]]], enabled: bool) -> Any:
    if not enabled:
        return chunks
    from tqdm import tqdm

    return tqdm(chunks, desc="chunks", unit="chunk")
