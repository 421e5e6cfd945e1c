"""Every full-size measurement on one GPU in one go: one JSON and one Markdown table.

    python bench/gpu.py --out bench-results/gpu             # lexvla-7b on CUDA (make bench-gpu)
    python bench/gpu.py --preset tiny --out /tmp/gpu-tiny   # the same script on CPU, in seconds

Sections, in order (each one isolated: a failure is recorded and the next one runs; results are
written after every section, so a run cut short still leaves its table):

1. ``bf16_vs_fp32``: the full-size model built in float32 (random weights), a few images and
   captions encoded, the model cast to bf16 (``LexVLA.place``), encoded again and compared;
2. ``image_encoding``: images/s of the image encoder on uint8 pixels already on the GPU;
3. ``indexing``: the whole indexing job on synthetic photo-like JPEGs (decode in DataLoader
   workers, encode, sparsify, store with thumbnails), and the reader stage alone;
4. ``query_encoding``: batch-1 latency with the full prompt, with the shared prefix and with
   static shapes (CUDA graphs), and batched queries/s;
5. ``query_table``: the query table stage's distillation step (``training.query_table``) with
   the model as its teacher: steps/s, peak memory with the dense table and Adam, the losses
   over ``--table-steps`` steps on one batch, then pruning and the export to the stored form;
6. ``training``: the real training loop (``training.loop.Trainer``) for ``--train-steps`` steps
   on a synthetic shard set, samples/s and peak memory, then the shared-prefix step against the
   full-prompt step on one batch.

Nothing comes from the network: weights are random, the tokenizer is
``../shared/data/llama2-tokenizer`` when present, else a stand-in with Llama 2's sizes
(``bench/standin_tokenizer.py``). ``--preset tiny`` runs the same code on the CPU with the tiny
model, so the script is known to work before GPU time is spent (``tests/test_bench_gpu.py``).
The table reports what was measured on this machine; paste it into docs/results-training.md with the
GPU's name and the date.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu_sections as sections  # noqa: E402
from bench.gpu_report import markdown  # noqa: E402
from bench.gpu_training import training  # noqa: E402
from bench.standin_tokenizer import write_standin  # noqa: E402
from model import LexVLA, load_preset  # noqa: E402

SHARED_TOKENIZER = REPO.parent / "shared" / "data" / "llama2-tokenizer"
# Sizes per preset: the full-size ones fit the 8-minute budget on one H100-class GPU.
SIZES: dict[str, dict[str, int]] = {
    "lexvla-7b": {
        "image_batch": 256,
        "image_repeats": 10,
        "index_images": 4096,
        "text_batch": 256,
        "query_repeats": 50,
        "train_batch": 128,
        "train_steps": 20,
        "check_samples": 8,
        "table_batch": 128,
        "table_steps": 5,
    },
    "tiny": {
        "image_batch": 8,
        "image_repeats": 2,
        "index_images": 24,
        "text_batch": 8,
        "query_repeats": 5,
        "train_batch": 4,
        "train_steps": 4,
        "check_samples": 4,
        "table_batch": 8,
        "table_steps": 3,
    },
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json / .md")
    ap.add_argument("--preset", choices=sorted(SIZES), default="lexvla-7b")
    ap.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    ap.add_argument("--tokenizer", type=Path, help="Llama 2 tokenizer folder (default: shared)")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip sections after this")
    ap.add_argument("--sections", default="all", help="comma list of section names, or all")
    for name, value in SIZES["tiny"].items():
        ap.add_argument(
            f"--{name.replace('_', '-')}", type=int, help=f"default: per preset ({value} tiny)"
        )
    args = ap.parse_args(argv)
    for name, value in SIZES[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def pick_device(requested: str, preset: str) -> torch.device:
    name = requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {requested}: CUDA is not available on this machine")
    if preset != "tiny" and device.type != "cuda":
        raise SystemExit(
            f"--preset {preset} needs a CUDA GPU (7B weights in bf16); none is available here. "
            "Run `python bench/gpu.py --preset tiny --out DIR` to check the script on the CPU."
        )
    return device


def tokenizer_folder(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """(folder, what it is): the named one, the shared Llama 2 one, or a generated stand-in."""
    if args.preset == "tiny":
        return "", "the tiny preset's own"
    if args.tokenizer is not None:
        if not (args.tokenizer / "tokenizer.model").is_file():
            raise SystemExit(f"--tokenizer {args.tokenizer}: no tokenizer.model there")
        return str(args.tokenizer), "given"
    if (SHARED_TOKENIZER / "tokenizer.model").is_file():
        return str(SHARED_TOKENIZER), "Llama 2 (shared/data)"
    return str(write_standin(workdir / "standin-tokenizer")), "stand-in with Llama 2's sizes"


def build_model(
    args: argparse.Namespace, device: torch.device, tokenizer: str, workdir: Path
) -> LexVLA:
    """The inference model in float32 with random weights, LoRA on the text side, on ``device``."""
    torch.manual_seed(0)
    if args.preset == "tiny":
        from model.tiny import create_tiny_model

        model = create_tiny_model(workdir / "tiny", overrides={"text.train_mode": "lora"})
        return model.place(device=device).eval()
    config = load_preset(args.preset).with_overrides(
        {
            "text.base": None,
            "image.base": None,
            "text.tokenizer": tokenizer,
            "text.train_mode": "lora",
        }
    )
    with torch.device(device):
        model = LexVLA.from_config(config, trainable=False, backbone_dtype=torch.float32)
    return model.place(device=device).eval()


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


class Run:
    """Runs sections within the budget, records results or errors, writes the files each time."""

    def __init__(self, args: argparse.Namespace, device: torch.device, meta: dict[str, Any]):
        self.args, self.device = args, device
        self.deadline = time.monotonic() + args.budget_s
        self.wanted = None if args.sections == "all" else set(args.sections.split(","))
        self.results: dict[str, Any] = {"machine": meta, "sections": {}}

    def wants(self, name: str) -> bool:
        return self.wanted is None or name in self.wanted

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if not self.wants(name):
            return None
        if time.monotonic() > self.deadline:
            self.record(name, {"skipped": f"over the {self.args.budget_s:g} s budget"})
            return None
        start = time.monotonic()
        try:
            value = fn()
        except Exception as exc:
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        value = {**value, "section_s": round(time.monotonic() - start, 1)}
        self.record(name, value)
        return value

    def record(self, name: str, value: dict[str, Any]) -> None:
        self.results["sections"][name] = value
        print(json.dumps({name: value}), flush=True)
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / "results.md").write_text(markdown(self.results))


def inference_sections(run: Run, model: LexVLA, workdir: Path) -> None:
    """Image encoding, indexing and query encoding, all in bf16."""
    args = run.args
    model.place(dtype=torch.bfloat16)
    run.section(
        "image_encoding",
        lambda: sections.image_encoding(model, args.image_batch, args.image_repeats),
    )
    run.section(
        "indexing",
        lambda: sections.indexing(
            model,
            sections.write_photos(workdir / "photos", args.index_images, args.workers),
            workdir / "store",
            args.image_batch,
            args.workers,
        ),
    )
    run.section(
        "query_encoding",
        lambda: sections.query_encoding(model, args.text_batch, args.query_repeats),
    )
    run.section(
        "query_table",
        lambda: sections.query_table(model, args.table_batch, args.table_steps),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = pick_device(args.device, args.preset)
    with tempfile.TemporaryDirectory(prefix="lexvla-bench-gpu-") as tmp:
        workdir = Path(tmp)
        tokenizer, kind = tokenizer_folder(args, workdir)
        meta = machine(device) | {"preset": args.preset, "tokenizer": kind, "workers": args.workers}
        run = Run(args, device, meta)
        holder: dict[str, LexVLA] = {}

        def first() -> dict[str, Any]:
            holder["model"] = build_model(args, device, tokenizer, workdir)
            return sections.bf16_vs_fp32(holder["model"], args.check_samples)

        run.section("bf16_vs_fp32", first)
        inference = ("image_encoding", "indexing", "query_encoding", "query_table")
        if "model" not in holder and any(run.wants(name) for name in inference):
            try:  # the first section was not asked for, or failed before the model was built
                holder["model"] = build_model(args, device, tokenizer, workdir)
            except Exception as exc:
                for name in inference:
                    run.record(name, {"error": f"model not built: {type(exc).__name__}: {exc}"})
        if "model" in holder:
            inference_sections(run, holder.pop("model"), workdir)  # the model is freed after
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        run.section(
            "training",
            lambda: training(
                args.preset,
                workdir,
                device,
                args.train_batch,
                args.train_steps,
                args.workers,
                tokenizer,
                args.check_samples,
            ),
        )
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    failed = [name for name, value in run.results["sections"].items() if not passed(value)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def passed(value: dict[str, Any]) -> bool:
    """No error, and every ``pass`` flag (nested one level) true."""
    if "error" in value or value.get("pass") is False:
        return False
    return all(passed(v) for v in value.values() if isinstance(v, dict))


if __name__ == "__main__":
    sys.exit(main())
