"""Training throughput: samples/s of the real training step (forward, loss, backward, AdamW).

    python bench/train.py                                    # tiny preset on CPU
    python bench/train.py --image-size 112 224 --batch-size 32 64 --threads 1 2
    python bench/train.py --preset lexvla-7b --batch-size 16 32   # full size, random weights, GPU

The tiny preset runs on pre-rendered synthetic shapes batches (data loading is not timed: in a
run, DataLoader workers prepare the next samples while the step runs). ``lexvla-7b`` builds the
full architecture with *random* weights (no download): frozen DINOv2-L and Llama-2-7B in bf16,
LoRA rank 20, float32 adapter and visual codebook, gradient checkpointing on Llama, bf16
autocast; it needs a CUDA GPU and the Llama 2 tokenizer (``--tokenizer``, the shared copy by
default) for the 17,234-word vocabulary. It reports step time, samples/s and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import LexVLA, load_preset  # noqa: E402
from model.losses import LexVLALoss  # noqa: E402
from training.config import OptimSettings  # noqa: E402
from training.data import ShapesDataset, collate  # noqa: E402
from training.module import TrainModule  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.setup import enable_gradient_checkpointing  # noqa: E402
from training.step import train_step  # noqa: E402

DEFAULT_TOKENIZER = REPO.parent / "shared" / "data" / "llama2-tokenizer"
WORDS = [
    "a",
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "red",
    "blue",
    "green",
    "ball",
    "beach",
    "street",
    "runs",
    "jumps",
    "on",
    "in",
    "the",
]


def tiny_model(image_size: int, text_mode: str, workdir: str) -> LexVLA:
    from model.tiny import create_tiny_model

    overrides = {"image.image_size": image_size, "text.train_mode": text_mode}
    return create_tiny_model(workdir, seed=0, overrides=overrides)


def full_model(tokenizer: Path) -> LexVLA:
    """lexvla-7b with random weights, built directly on the GPU (frozen backbones in bf16)."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "the full-size benchmark (--preset lexvla-7b) needs a CUDA GPU; none is available. "
            "Run the tiny preset on CPU instead."
        )
    if not (tokenizer / "tokenizer.model").is_file():
        raise SystemExit(f"no Llama 2 tokenizer at {tokenizer}; pass --tokenizer")
    config = load_preset("lexvla-7b")
    config = config.model_copy(
        update={
            "text": config.text.model_copy(update={"base": None, "tokenizer": str(tokenizer)}),
            "image": config.image.model_copy(update={"base": None}),
        }
    )
    with torch.device("cuda"):
        model = LexVLA.from_config(config, backbone_dtype=torch.bfloat16)
    enable_gradient_checkpointing(model)
    return model.cuda().train()


def shapes_batch(n: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    data = ShapesDataset(n, seed=0, image_size=image_size)
    batch = collate([data[i] for i in range(n)], image_size=image_size, train=True)
    return batch["pixel_values"], batch["captions"]


def random_batch(n: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(0)
    captions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) for _ in range(n)]
    return torch.randn(n, 3, image_size, image_size), captions


def time_steps(
    model: LexVLA,
    batch: tuple[torch.Tensor, list[str]],
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, float]:
    module = TrainModule(model).train()
    optimizer = build_optimizer(model, OptimSettings())
    loss_fn = LexVLALoss(warmup_steps=0)
    pixels, captions = batch

    def step(i: int) -> None:
        train_step(module, loss_fn, optimizer, None, pixels, captions, i, device=device)

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    out = {"step_s": round(seconds, 4), "samples_per_s": round(len(captions) / seconds, 1)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    if args.preset == "lexvla-7b":
        device = torch.device("cuda")
        model = full_model(args.tokenizer)
        for batch_size in args.batch_size:
            batch = random_batch(batch_size, model.config.image.image_size)
            result = time_steps(model, batch, args.steps, args.warmup, device)
            rows.append({"preset": args.preset, "batch_size": batch_size, **result})
            print(json.dumps(rows[-1]), flush=True)
        return rows
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as workdir:
        for image_size in args.image_size:
            model = tiny_model(image_size, args.text_mode, workdir)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for batch_size in args.batch_size:
                    batch = shapes_batch(batch_size, image_size)
                    result = time_steps(model, batch, args.steps, args.warmup, device)
                    rows.append(
                        {"preset": "tiny", "image_size": image_size, "text_mode": args.text_mode,
                         "threads": threads, "batch_size": batch_size, **result}
                    )  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["tiny", "lexvla-7b"], default="tiny")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32])
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--text-mode", choices=["full", "lora", "frozen"], default="full")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    rows = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
