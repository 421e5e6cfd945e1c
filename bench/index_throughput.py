"""Indexing throughput: images/s through the whole job (decode + encode + store with thumbnails).

    python bench/index_throughput.py                      # tiny random model on CPU, flickr sample
    python bench/index_throughput.py --device cuda --preset lexvla-7b --tokenizer PATH/llama2-tokenizer

Runs :func:`indexer.runner.run_index_job` on a folder of JPEGs into a fresh temporary store, once
with JPEG draft-mode decoding (the runner's default: libjpeg decodes at a reduced scale when
the image is much larger than the encoder needs) and once without (``--modes`` picks). It also
times decoding alone (as many threads as the job has decode worker processes) and preprocess + encode + sparsify alone (decoded images
in memory) to show where the time goes. The full-size run
builds the paper's architectures with random weights in bf16 on the GPU (``bench/encode.py``'s
``build``); timings do not depend on the weights. Results go to docs/results-indexing.md with the
machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.encode import build
from indexer.decode import THUMBNAIL_SIZE, Skipped, decode_item
from indexer.job import IndexJob
from indexer.runner import run_index_job
from model.data import iter_source

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/flickr8k-sample/images"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of images")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", help="tokenizer folder (full-size presets)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--limit", type=int, help="at most this many images")
    ap.add_argument("--modes", default="draft,full", help="comma list of draft, full")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def _decode_only(images: str, limit: int | None, workers: int, draft: int | None) -> float:
    items = list(iter_source(images))[:limit]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda it: decode_item(it, draft_size=draft), items))
    return len(items) / (time.perf_counter() - start)


def _encode_only(model: Any, args: argparse.Namespace, draft: int) -> float:
    """Preprocess + encode + sparsify of already decoded images (no decode, no store)."""
    items = list(iter_source(args.images))[: args.limit]
    decoded = [d for it in items if not isinstance(d := decode_item(it, draft_size=draft), Skipped)]
    images = [d.image for d in decoded]
    _sync(args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), args.batch_size):
            model.sparsify(model.encode_pil(images[i : i + args.batch_size]))
    _sync(args.device)
    return len(images) / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _index(args: argparse.Namespace, model: Any, draft: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        job = IndexJob(
            source=args.images, store=str(Path(tmp) / "store"), checkpoint="unused",
            device=args.device, batch_size=args.batch_size, chunk_size=1024,
            decode_workers=args.decode_workers, limit=args.limit, progress=False,
            draft_decode=draft,
        )  # fmt: skip
        _sync(args.device)
        start = time.perf_counter()
        report = run_index_job(job, model)
        seconds = time.perf_counter() - start
    return report.indexed / seconds, report.indexed


def main() -> None:
    args = _parse()
    warnings.filterwarnings("ignore")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    if not Path(args.images).is_dir():
        raise SystemExit(f"no image folder at {args.images} (give --images)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"draft", "full"}:
        raise SystemExit(f"--modes takes draft and/or full, got {args.modes!r}")
    with tempfile.TemporaryDirectory() as workdir:
        model = build(args, workdir)
        model.eval()
        size = model.config.image.image_size
        # warm up (first-call allocation, kernel selection) outside the timed runs
        from PIL import Image

        with torch.inference_mode():
            model.encode_pil([Image.new("RGB", (size, size))] * min(args.batch_size, 4))
        draft_size = max(size, THUMBNAIL_SIZE)
        for item in list(iter_source(args.images))[: args.limit]:
            item.read_bytes()  # page cache: the first timed mode must not pay for cold reads
        result: dict[str, object] = {
            "preset": args.preset,
            "device": torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(),
            "decode_workers": args.decode_workers,
            "batch_size": args.batch_size,
        }
        for mode in modes:
            draft = mode == "draft"
            decode = _decode_only(
                args.images, args.limit, args.decode_workers, draft_size if draft else None
            )
            per_s, indexed = _index(args, model, draft)
            result[f"{mode}_images"] = indexed
            result[f"{mode}_index_images_per_s"] = round(per_s, 1)
            result[f"{mode}_decode_only_images_per_s"] = round(decode, 1)
        result["encode_only_images_per_s"] = round(_encode_only(model, args, draft_size), 1)
    print(json.dumps(result) if args.json else "\n".join(f"{k:32s} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
