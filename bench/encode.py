"""Encoder throughput: images/s and text queries/s (p50 latency).

    python bench/encode.py                       # tiny preset on CPU
    python bench/encode.py --preset lexvla-7b --device cuda --tokenizer PATH/llama2-tokenizer

The full-size run builds the paper's architectures (DINOv2 ViT-L/14 + Llama-2-7B) with random
weights in bf16 on the GPU: no checkpoint is needed, and timings do not depend on the weights.
Results go to docs/results-training.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings

import torch

from model import LexVLA, load_preset
from model.tiny import create_tiny_model

CAPTION = "a brown dog runs on the beach next to a child holding a red ball"


def build(args: argparse.Namespace, workdir: str) -> LexVLA:
    if args.preset == "tiny":
        return create_tiny_model(workdir).to(args.device).eval()
    if args.tokenizer is None:
        raise SystemExit("--tokenizer PATH is needed for full-size random-weight models")
    cfg = load_preset(args.preset).with_overrides(
        {"text.base": None, "text.tokenizer": args.tokenizer, "image.base": None}
    )
    with torch.device(args.device):
        model = LexVLA.from_config(cfg, backbone_dtype=torch.bfloat16)
    return model.place(dtype=torch.bfloat16).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, device: str, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer", help="tokenizer folder (full-size presets)")
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as workdir:
        model = build(args, workdir)
        size = model.config.image.image_size
        dtype = next(model.image.adapter.parameters()).dtype
        pixels = torch.randn(args.image_batch, 3, size, size, device=args.device, dtype=dtype)
        t_img = time_calls(lambda: model.encode_images(pixels), args.device, args.repeats)
        one = time_calls(lambda: model.encode_texts([CAPTION]), args.device, args.repeats * 3)
        batch = [CAPTION] * args.text_batch
        t_txt = time_calls(lambda: model.encode_texts(batch), args.device, args.repeats)
    prompt_tokens = int(model.text.tokenize([CAPTION])["input_ids"].shape[1])
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "vocabulary": len(model.vocabulary),
        "images_per_s": round(args.image_batch / statistics.median(t_img), 1),
        "image_batch": args.image_batch,
        "text_p50_ms_batch1": round(1000 * statistics.median(one), 2),
        "texts_per_s": round(args.text_batch / statistics.median(t_txt), 1),
        "text_batch": args.text_batch,
        "prompt_tokens": prompt_tokens,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k:20s} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
