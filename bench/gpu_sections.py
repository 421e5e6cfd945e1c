"""The measurements of ``bench/gpu.py``, one function per section; each returns a flat dict.

Inputs are made on the spot: random weights, synthetic photo-like JPEGs (smooth colour fields
with sensor-like noise, so files and decode times are photo-sized), captions of common English
words, and a webdataset shard set written with ``training.data.write_shards``. Timed regions
synchronise the device before reading the clock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.standin_tokenizer import ENGLISH
from indexer.job import IndexJob
from indexer.loader import ChunkTag, PrepareImages, image_loader
from indexer.runner import run_index_job
from model import LexVLA
from model.data import iter_source
from model.sparsify import sparsify

WORDS = [w for w in ENGLISH if w not in ("this", "sentence", "means", "one", "word")]


# --- inputs -----------------------------------------------------------------------------------
def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [caption(rng) for _ in range(n)]


def photo(seed: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """A photo-like image: a smooth random colour field plus noise (JPEG ~100 KB at 500 px)."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _write_photo(job: tuple[str, int]) -> None:
    folder, seed = job
    photo(seed).save(Path(folder) / f"{seed:06d}.jpg", quality=90)


def _train_sample(seed: int) -> dict[str, Any]:
    return {"image": photo(seed, (256, 256)), "caption": caption(random.Random(seed))}


@contextlib.contextmanager
def _pool(workers: int) -> Any:
    """Worker processes started afresh (spawn), not forked: a fork copies this process's
    signal handlers and the locks its threads hold (a JVM loaded by the Lucene engine takes
    SIGTERM, so a forked worker would never end); the pool is closed, not terminated, so the
    workers end when their queue does."""
    with multiprocessing.get_context("spawn").Pool(max(1, workers)) as pool:
        yield pool
        pool.close()
        pool.join()


def write_photos(folder: Path, n: int, workers: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with _pool(workers) as pool:
        pool.map(_write_photo, [(str(folder), i) for i in range(n)], chunksize=64)
    return folder


def write_train_shards(folder: Path, n: int, workers: int) -> Path:
    from training.data import write_shards

    with _pool(workers) as pool:
        write_shards(pool.imap(_train_sample, range(n), chunksize=32), folder, 1000)
    return folder


# --- helpers ----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2
) -> list[float]:
    """Seconds per call of ``fn`` (device synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean Jaccard overlap of the active (sparsified) word sets of matching rows."""
    rows_a, rows_b = sparsify(a.cpu()), sparsify(b.cpu())
    scores = []
    for i in range(rows_a.shape[0]):
        x, y = set(rows_a[i].indices.tolist()), set(rows_b[i].indices.tolist())
        scores.append(len(x & y) / max(1, len(x | y)))
    return float(np.mean(scores))


# --- sections ---------------------------------------------------------------------------------
def bf16_vs_fp32(model: LexVLA, samples: int) -> dict[str, Any]:
    """Encode the same images and captions in float32, cast the model to bf16, encode again."""
    size = model.config.image.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (samples, 3, size, size), dtype=torch.uint8, generator=generator)
    texts = captions(samples, seed=1)
    with torch.inference_mode():
        ref_image, ref_text = model.encode_images(pixels), model.encode_texts(texts)
        model.place(dtype=torch.bfloat16)
        image, text = model.encode_images(pixels), model.encode_texts(texts)
    ref_scores, scores = ref_text @ ref_image.T, text @ image.T
    image_cos, text_cos = _cosines(image, ref_image), _cosines(text, ref_text)
    result = {
        "samples": samples,
        "image_cosine_min": round(float(image_cos.min()), 5),
        "text_cosine_min": round(float(text_cos.min()), 5),
        "image_active_words_jaccard": round(_jaccard(image, ref_image), 4),
        "text_active_words_jaccard": round(_jaccard(text, ref_text), 4),
        "score_max_abs_diff": round(float((scores - ref_scores).abs().max()), 5),
        "finite": bool(torch.isfinite(image).all() and torch.isfinite(text).all()),
    }
    result["pass"] = bool(
        result["finite"] and result["image_cosine_min"] > 0.99 and result["text_cosine_min"] > 0.99
    )
    return result


def image_encoding(model: LexVLA, batch: int, repeats: int) -> dict[str, Any]:
    """Images/s of the image encoder on uint8 pixels already on the device (no decoding)."""
    device = model.device
    size = model.config.image.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    reset_peak(device)
    with torch.inference_mode():
        seconds = timed(lambda: model.encode_images(pixels), device, repeats)
    return {
        "batch": batch,
        "images_per_s": round(batch / statistics.median(seconds), 1),
        "peak_memory_gib": peak_gib(device),
    }


def decoding_only(folder: Path, model: LexVLA, batch: int, workers: int) -> float:
    """Images/s of the indexer's reader stage alone (DataLoader workers, no encoding)."""
    items = list(iter_source(folder))
    plan = [
        [(ChunkTag(0, "decode-only", last=False), it) for it in items[i : i + batch]]
        for i in range(0, len(items), batch)
    ]
    size = model.config.image.image_size
    prepare = PrepareImages(size, 100_000_000, max(size, 256), 256)
    start = time.perf_counter()
    count = sum(len(b) for b in image_loader(plan, prepare, workers, pin_memory=False))
    return count / (time.perf_counter() - start)


def indexing(model: LexVLA, folder: Path, store: Path, batch: int, workers: int) -> dict[str, Any]:
    """The whole indexing job (decode in workers, encode, sparsify, store with thumbnails)."""
    device = model.device
    job = IndexJob(
        source=str(folder),
        store=str(store),
        checkpoint="unused",
        device=str(device),
        batch_size=batch,
        chunk_size=batch * 8,
        decode_workers=workers,
        progress=False,
    )
    reset_peak(device)
    start = time.perf_counter()
    report = run_index_job(job, model)
    seconds = time.perf_counter() - start
    return {
        "images": report.indexed,
        "batch": batch,
        "decode_workers": workers,
        "images_per_s": round(report.indexed / seconds, 1),
        "decode_only_images_per_s": round(decoding_only(folder, model, batch, workers), 1),
        "peak_memory_gib": peak_gib(device),
    }


def query_encoding(model: LexVLA, batch: int, repeats: int) -> dict[str, Any]:
    """Batch-1 latency (full prompt, shared prefix, static shapes/graphs) and batched queries/s."""
    device, text = model.device, model.text
    singles = captions(repeats, seed=2)
    many = captions(batch, seed=3)
    out: dict[str, Any] = {"prompt_tokens": int(text.tokenize(singles[:1])["input_ids"].shape[1])}
    out["prefix_tokens"] = len(text.prefix_ids)

    def latency(name: str) -> None:
        calls = iter(singles * 3)
        seconds = timed(lambda: model.encode_texts([next(calls)]), device, repeats)
        out[f"batch1_{name}_p50_ms"] = round(1000 * statistics.median(seconds), 2)
        out[f"batch1_{name}_p90_ms"] = round(1000 * float(np.percentile(seconds, 90)), 2)

    with torch.inference_mode():
        text.use_prefix_cache = False
        latency("full_prompt")
        full_batch = timed(lambda: model.encode_texts(many), device, 3, warmup=1)
        text.use_prefix_cache = True
        latency("shared_prefix")
        shared_batch = timed(lambda: model.encode_texts(many), device, 3, warmup=1)
        eager = torch.cat([model.encode_texts([c]) for c in singles[:8]])
        static = text.enable_static_queries((1,), cuda_graphs=True)
        out["static_shapes"] = static.warm_up()
        out["cuda_graphs"] = static.graphs_active and all(
            c.graph is not None for c in static.calls.values()
        )
        latency("static")
        graphed = torch.cat([model.encode_texts([c]) for c in singles[:8]])
        text.static = None
    out["static_vs_eager_max_abs_diff"] = float((graphed - eager).abs().max())
    out["batch"] = batch
    out["batched_full_prompt_queries_per_s"] = round(batch / statistics.median(full_batch), 1)
    out["batched_shared_prefix_queries_per_s"] = round(batch / statistics.median(shared_batch), 1)
    return out


def query_table(model: LexVLA, batch: int, steps: int, top_k: int = 64) -> dict[str, Any]:
    """The query table stage's step (``training.query_table.table_step``) with ``model`` as the
    frozen teacher: its text and image vectors of a batch, then the dense table's step (sums of
    token rows, both losses, Adam), the projection; steps/s, peak memory, the losses; then the
    one-off pruning to ``top_k`` words a token and the export to the stored form."""
    from training.config import QueryTableSettings
    from training.query_table import TableStudent, table_step

    device = model.device
    settings = QueryTableSettings(steps=steps, batch_size=batch, top_k=top_k)
    reset_peak(device)
    student = TableStudent(model.tokenizer, model.vocabulary).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.lr)
    size = model.config.image.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    data = {"captions": captions(batch, seed=5), "pixel_values": pixels}
    losses: list[dict[str, float]] = []

    def step() -> None:
        losses.append(table_step(student, model, optimizer, data, settings))
        student.project(None, optimizer)

    seconds = timed(step, device, steps, warmup=1)
    prune = timed(lambda: student.project(top_k, optimizer), device, 1, warmup=0)
    start = time.perf_counter()
    rows = student.export(top_k)
    export_s = time.perf_counter() - start
    first, last = losses[0]["distill_loss"], losses[-1]["distill_loss"]
    finite = all(np.isfinite(v) for r in losses for v in r.values())
    return {
        "batch": batch,
        "timed_steps": steps,
        "steps_per_s": round(1 / statistics.median(seconds), 2),
        "samples_per_s": round(batch / statistics.median(seconds), 1),
        "table_gib": round(student.weight.numel() * 4 / 2**30, 2),
        "peak_memory_gib": peak_gib(device),
        "prune_s": round(prune[0], 3),
        "export_s": round(export_s, 2),
        "stored_entries": int(rows.nnz),
        "distill_loss_first": round(first, 4),
        "distill_loss_last": round(last, 4),
        "losses_finite": finite,
        "pass": finite and last < first,  # one batch, repeated: the loss must fall
    }
