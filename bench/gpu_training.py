"""The training section of ``bench/gpu.py``: the real loop on a synthetic shard set, then a check.

``training.loop.Trainer`` runs exactly as ``lexvla train`` does (webdataset shards through
DataLoader workers, gradient checkpointing, bf16 autocast on CUDA, AdamW, the final checkpoint),
with random-weight backbones built on the device. Throughput is timed by the loop's step hook
over the steps after ``warmup`` (data waits included), and peak memory over the same steps.

Afterwards the same module takes one batch twice, with the shared prompt prefix and with the
full prompt per sample, and the two losses and gradients are compared: equal to float32
rounding on CPU, to bf16 rounding on CUDA.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.gpu_sections import peak_gib, reset_peak, write_train_shards
from bench.memory_estimate import estimate
from training import distributed
from training.config import TrainConfig
from training.loop import Trainer
from training.step import forward_loss


def train_config(
    preset: str, out: Path, shards: Path, batch: int, steps: int, workers: int, tokenizer: str
) -> TrainConfig:
    overrides: dict[str, Any] = {"text.train_mode": "lora"}
    if preset != "tiny":
        overrides |= {"text.base": None, "image.base": None, "text.tokenizer": tokenizer}
    return TrainConfig.model_validate(
        {
            "output_dir": str(out),
            "model": {"start": preset, "overrides": overrides},
            "data": {"train": str(shards), "num_workers": workers},
            "batch_size": batch,
            "steps": steps,
            "log_every": steps,
            "checkpoint": {"every": steps, "keep_last": 1},
            "progress": False,
            "tensorboard": False,
            "resume": "never",
        }
    )


def _gradients(trainer: Trainer, pixels: torch.Tensor, texts: list[str], shared: bool) -> Any:
    trainer.model.text.use_prefix_cache = shared
    trainer.optimizer.zero_grad(set_to_none=True)
    config = trainer.config
    parts = forward_loss(
        trainer.module,
        trainer.loss_fn,
        pixels,
        texts,
        trainer.step,
        trainer.info.device,
        config.precision,
    )
    parts["loss"].backward()
    grads = {
        name: p.grad.detach().float().clone()
        for name, p in trainer.model.named_parameters()
        if p.grad is not None
    }
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(parts["loss"].detach()), grads


def shared_prefix_check(trainer: Trainer, samples: int) -> dict[str, Any]:
    """Loss and gradients of one batch: shared prompt prefix vs the full prompt per sample."""
    batch = trainer.stream.next_batch()
    pixels, texts = batch["pixel_values"][:samples], batch["captions"][:samples]
    shared_loss, shared = _gradients(trainer, pixels, texts, True)
    full_loss, full = _gradients(trainer, pixels, texts, False)
    trainer.model.text.use_prefix_cache = trainer.config.model.shared_prefix
    if shared.keys() != full.keys():
        raise RuntimeError("the two paths gave gradients to different parameters")
    relative = {
        n: float((shared[n] - full[n]).norm() / full[n].norm().clamp(min=1e-30)) for n in full
    }
    cosine = {
        n: float(torch.nn.functional.cosine_similarity(shared[n].flatten(), full[n].flatten(), 0))
        for n in full
        if full[n].norm() > 0
    }
    text_names = [n for n in full if "lora_" in n or n.startswith("text.")]
    cuda = trainer.info.device.type == "cuda"
    loss_diff = abs(shared_loss - full_loss) / max(abs(full_loss), 1e-12)
    result = {
        "samples": len(texts),
        "loss_shared_prefix": round(shared_loss, 6),
        "loss_full_prompt": round(full_loss, 6),
        "loss_relative_diff": loss_diff,
        "grad_tensors": len(full),
        "text_grad_tensors": len(text_names),
        "grad_cosine_min": round(min(cosine.values()), 6) if cosine else None,
        "grad_relative_diff_max": max(relative.values()),
    }
    # bf16 autocast on CUDA rounds the two paths differently; float32 on CPU must agree closely
    tolerance = {"loss": 1e-2, "cosine": 0.99} if cuda else {"loss": 1e-5, "cosine": 0.9999}
    result["pass"] = bool(
        loss_diff < tolerance["loss"]
        and (result["grad_cosine_min"] is None or result["grad_cosine_min"] > tolerance["cosine"])
        and text_names
    )
    return result


def training(
    preset: str,
    workdir: Path,
    device: torch.device,
    batch: int,
    steps: int,
    workers: int,
    tokenizer: str,
    check_samples: int = 8,
) -> dict[str, Any]:
    """20 (``steps``) steps of the real loop; samples/s and peak memory over the last ones."""
    warmup = min(3, steps - 1)
    shards = write_train_shards(workdir / "train-shards", batch * (steps + 2), workers)
    config = train_config(preset, workdir / "run", shards, batch, steps, workers, tokenizer)
    info = distributed.setup(str(device))
    step_s: list[float] = []
    losses: list[float] = []

    def on_step(step: int, result: dict[str, float]) -> None:
        # step_s: fetching the batch + the step, which ends with a host read of the loss (a
        # device sync), so it is a true wall time; checkpoint saving is not in it
        losses.append(result["loss"])
        if step == warmup:
            reset_peak(device)
        elif step > warmup:
            step_s.append(result["step_s"])

    trainer = Trainer(config, info)
    start = time.perf_counter()
    try:
        trainer.run(on_step)
        wall = time.perf_counter() - start
        result: dict[str, Any] = {
            "batch": batch,
            "steps": steps,
            "timed_steps": len(step_s),
            "samples_per_s": round(len(step_s) * batch / sum(step_s), 1),
            "step_s_median": round(statistics.median(step_s), 4) if step_s else None,
            "peak_memory_gib": peak_gib(device),
            "wall_s_with_build_and_save": round(wall, 1),
            "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4),
            "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
            "gradient_checkpointing": config.model.gradient_checkpointing,
            "shared_prefix": config.model.shared_prefix,
            "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
        }
        if preset != "tiny":
            guess = estimate(trainer.model.config, batch, caption_tokens=14)
            result["estimated_peak_gb"] = guess["total_gb"]
        check = shared_prefix_check(trainer, min(check_samples, batch))
    finally:
        trainer.stream.close()
        distributed.cleanup()
    return {"loop": result, "shared_prefix_check": check}
