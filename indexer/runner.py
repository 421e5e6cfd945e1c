"""The indexing job: source -> decode -> encode -> corpus store -> published search index.

Reader, encoder and writer are separate steps driven by :func:`run_index_job` (clip-retrieval's
shape), which runs one :class:`~indexer.job.IndexJob` and ends with
:func:`indexer.build.build_index`. The source is cut into *chunks* of ``chunk_size`` consecutive items; each chunk becomes
one store shard, committed together with its skipped files and a ``done`` marker
(:mod:`indexer.store`). A killed job run again with the same source and chunk size skips the
chunks marked done, so it resumes exactly: nothing encoded twice, nothing lost. Images whose id
is already live in the store are never encoded again either, so re-running a job on a folder
that has grown indexes only the new images (incremental indexing), whatever the chunking.

Images are decoded, cropped and thumbnailed in DataLoader worker processes (``indexer.loader``:
uint8 crops, pinned memory on CUDA, JPEG draft mode) and encoded ``batch_size`` at a time. The
encoder runs one batch ahead of the host: batch i's vectors are copied to pinned host memory
behind its own kernels, batch i+1 is queued, and only then does the host wait for batch i's copy,
cut its rows to sparse (``model.sparsify``) and hand them to the store, so the GPU does not wait
for the host's bookkeeping. Memory holds a few batches, never a chunk of images.

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
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from indexer.build import build_engine_index
from indexer.decode import ImageInfo
from indexer.job import IndexJob
from indexer.loader import ChunkTag, LoadedBatch, PrepareImages, Task, image_loader
from indexer.metadata_job import check_declarations, chunk_identity, prepare_chunk
from indexer.store import CorpusStore
from model.data import SkipCounter, Skipped, SourceItem, iter_source
from model.protocols import LexicalModel
from model.sparsify import default_threshold, keep_heaviest

log = logging.getLogger(__name__)


@dataclass
class JobReport:
    indexed: int = 0
    skipped: int = 0
    already_stored: int = 0
    chunks_done_before: int = 0
    chunks_written: int = 0
    metadata_updated: int = 0  # stored images whose metadata changed (not re-encoded)
    index_version: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # skips by reason code
    # what the engine says it wrote, e.g. the shared target of a sharded job (its collection)
    written: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as ``lexvla index build`` prints it (the engine's entries inline)."""
        values = asdict(self)
        return values | values.pop("written")


def run_index_job(job: IndexJob, model: LexicalModel | None = None) -> JobReport:
    """Encode the source's new images into the store (resumably), then publish an index.

    The source and the store are checked before the model is loaded, so a bad path or manifest
    fails at once.
    """
    if job.require_store and not (Path(job.store) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"no corpus store at {job.store}: `index add` adds to an existing store; "
            "use `index build` to create one"
        )
    items = iter_source(job.source, job.source_kind, job.image_root)
    check_declarations(job.store, job.fields)
    if model is None:
        from model import LexVLA

        model = LexVLA.from_pretrained(job.checkpoint, device=job.device, dtype=_dtype(job))
    model.eval()
    store = open_store(job.store, model, job.max_words)
    report = JobReport()
    try:
        store.declare_fields(job.fields)
    except ValueError:
        store.close()
        raise
    bar = _progress(job.progress)
    try:
        if job.limit is not None:
            items = islice(items, job.limit)
        if job.num_shards > 1:
            items = (it for it in items if shard_of(it.id, job.num_shards) == job.shard_id)
        plan = _plan(job, store, _chunks(items, job.chunk_size), report, bar)
        writer = _ChunkWriter(store, report, bar)
        _encode_all(job, model, store, plan, writer, report)
        if job.index:
            built = build_engine_index(
                store, job.index, job.engine, job.engine_options,
                sharded=job.num_shards > 1, progress=job.progress,
            )  # fmt: skip
            report.index_version = built.version.name if built.version else None
            report.written = built.report
    finally:
        if bar is not None:
            bar.close()
        store.close()
    return report


def open_store(path: str | Path, model: LexicalModel, max_words: int | None = None) -> CorpusStore:
    """Open the store made with this checkpoint and word budget, or create it; refuse another
    checkpoint's or another budget's."""
    vocabulary = model.vocabulary
    if (Path(path) / "manifest.json").exists():
        store = CorpusStore.open(path, expected_vocabulary=vocabulary)
        stored = store.manifest["checkpoint_id"]
        budget = store.manifest.get("max_words")
        if budget != max_words:
            store.close()
            raise ValueError(
                f"the corpus store {path} keeps {_budget(budget)} per image, this job "
                f"{_budget(max_words)}; one store holds one budget: use a new store, or "
                f"{'--max-words ' + str(budget) if budget else 'no --max-words'}"
            )
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
    return CorpusStore.create(
        path, vocabulary, model.checkpoint_id, threshold, sparsity.top_k, max_words
    )


def _budget(max_words: int | None) -> str:
    return "all words" if max_words is None else f"the {max_words} heaviest words"


# --- steps ------------------------------------------------------------------------------------
def _dtype(job: IndexJob) -> torch.dtype:
    if job.dtype == "auto":
        return torch.bfloat16 if job.device.startswith("cuda") else torch.float32
    return torch.bfloat16 if job.dtype == "bfloat16" else torch.float32


def _plan(
    job: IndexJob,
    store: CorpusStore,
    chunks: Iterator[tuple[int, list[SourceItem]]],
    report: JobReport,
    bar: Any,
) -> Iterator[list[Task]]:
    """The batches to decode, in order (the loader's batch sampler; runs in this process)."""
    prefix = _job_prefix(job)
    for number, items in chunks:
        # the key names the chunk's exact ids and metadata: a chunk cut differently (a --limit,
        # a source that grew) is never taken for done, its stored images are skipped by id
        # instead; a chunk whose metadata changed updates its stored images' records
        identity = chunk_identity(items, job.collection)
        ids_digest = hashlib.sha256(identity.encode()).hexdigest()
        key = f"{prefix}/chunk-{number:06d}-{ids_digest[:12]}"
        if store.is_done(key):
            report.chunks_done_before += 1
            if bar is not None:
                bar.update(1)
            continue
        report.metadata_updated += prepare_chunk(store, items, job.collection)
        fresh = [it for it in items if it.error is not None or not store.has_id(it.id)]
        report.already_stored += len(items) - len(fresh)
        starts = range(0, len(fresh), job.batch_size) if fresh else [0]
        for start in starts:
            tag = ChunkTag(number, key, last=start + job.batch_size >= len(fresh))
            batch = fresh[start : start + job.batch_size]
            yield [(tag, it) for it in batch] if batch else [(tag, None)]


class _ChunkWriter:
    """Collects a chunk's rows batch by batch; commits it as one store shard at its last batch."""

    def __init__(self, store: CorpusStore, report: JobReport, bar: Any) -> None:
        self.store, self.report, self.bar = store, report, bar
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.rows: list[sp.csr_matrix] = []
        self.records: list[ImageInfo] = []
        self.thumbs: list[bytes | None] = []
        self.skipped: list[Skipped] = []

    def add(self, batch: LoadedBatch, rows: sp.csr_matrix | None) -> None:
        self.skipped.extend(batch.skipped)
        if rows is not None:
            self.rows.append(rows)
            self.ids.extend(info.id for info in batch.infos)
            self.records.extend(batch.infos)
            self.thumbs.extend(batch.thumbnails)
        if batch.tag.last:
            self._commit(batch.tag)

    def _commit(self, tag: ChunkTag) -> None:
        counts = SkipCounter(self.report.reasons)
        for s in self.skipped:
            log.warning("skipped %s: %s", s.source, s.message)
            counts.add(s.reason)
        self.report.reasons = counts.as_dict()
        vocab_size = len(self.store.vocabulary)
        empty = sp.csr_matrix((0, vocab_size), dtype=np.float32)
        matrix = sp.vstack([empty, *self.rows], format="csr")
        self.store.append_shard(
            self.ids, matrix, self.records, self.thumbs, skipped=self.skipped, done_key=tag.key
        )
        self.report.indexed += len(self.ids)
        self.report.skipped += len(self.skipped)
        self.report.chunks_written += 1
        if self.bar is not None:
            self.bar.update(1)
        self._reset()


def _encode_all(
    job: IndexJob,
    model: LexicalModel,
    store: CorpusStore,
    plan: Iterator[list[Task]],
    writer: _ChunkWriter,
    report: JobReport,
) -> None:
    """Decode (workers) -> encode (one batch ahead of the host) -> sparse rows -> writer."""
    draft = max(model.config.image.image_size, job.thumbnail_size) if job.draft_decode else None
    prepare = PrepareImages(
        model.config.image.image_size,
        job.max_pixels,
        draft,
        job.thumbnail_size if job.thumbnails else None,
    )
    pin = job.device.startswith("cuda") and torch.cuda.is_available()
    pending: tuple[LoadedBatch, _Vectors | None] | None = None
    with torch.inference_mode():
        for batch in image_loader(plan, prepare, job.decode_workers, pin):
            vectors = _launch(model, batch)  # queued on the device, not waited for
            if pending is not None:
                _finish(job, model, store, writer, report, *pending)
            pending = (batch, vectors)
        if pending is not None:
            _finish(job, model, store, writer, report, *pending)


_Vectors = tuple[torch.Tensor, Any]  # dense vectors on the host (pinned on CUDA), their event


def _launch(model: LexicalModel, batch: LoadedBatch) -> _Vectors | None:
    """Queue a batch's encoding and the copy of its vectors into pinned host memory.

    The copy is queued right behind the batch's own kernels, so waiting for its event (in
    :func:`_finish`, after the next batch has been queued) never waits for the next batch.
    """
    if not len(batch):
        return None
    dense = model.encode_images(batch.pixels)
    if dense.device.type != "cuda":
        return dense, None
    host = torch.empty(dense.shape, dtype=dense.dtype, pin_memory=True)
    host.copy_(dense, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _finish(
    job: IndexJob,
    model: LexicalModel,
    store: CorpusStore,
    writer: _ChunkWriter,
    report: JobReport,
    batch: LoadedBatch,
    vectors: _Vectors | None,
) -> None:
    """Sparse rows of a batch to the writer; content duplicates dropped.

    The content check runs here, after every earlier chunk is committed, so an image whose
    bytes an earlier chunk stored is recognised (as when chunks ran one after another).
    """
    rows = None
    if vectors is not None:
        dense, done = vectors
        if done is not None:
            done.synchronize()
        rows = sp.csr_matrix(model.sparsify(dense), dtype=np.float32)
        if job.max_words is not None:
            rows = keep_heaviest(rows, job.max_words)
    if rows is not None and job.skip_duplicate_content:
        keep = [not store.has_sha256(info.sha256) for info in batch.infos]
        report.already_stored += keep.count(False)
        batch = batch.select(keep)
        rows = rows[np.flatnonzero(keep)] if len(batch) else None
    writer.add(batch, rows)


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


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc="chunks", unit="chunk")
