"""One optimisation step: forward, loss over the global batch, backward, clip, update.

The loss (``model.losses.LexVLALoss``) gathers every rank's vectors and computes the loss of the
whole global batch on every rank; each rank's backward then yields its share, and the shares
*sum* to the single-process gradient. DDP *averages* gradients, so the backward loss is
multiplied by the world size. ``tests/test_training_distributed.py`` checks that two gloo
processes give the loss and the gradients of one process on the same global batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from model.losses import LexVLALoss


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when ``precision`` is bf16 (``auto`` means bf16 on CUDA, fp32 on CPU)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def forward_loss(
    module: nn.Module,
    loss_fn: LexVLALoss,
    pixel_values: torch.Tensor,
    captions: Sequence[str],
    step: int,
    device: torch.device,
    precision: str = "auto",
) -> dict[str, torch.Tensor]:
    """Named loss parts of a local batch (the loss itself is over the gathered global batch)."""
    with autocast(device, precision):
        out = module(pixel_values.to(device, non_blocking=True), list(captions))
    return loss_fn(out["image"], out["text"], out["logit_scale"], step, bow=out.get("bow"))


def train_step(
    module: nn.Module,
    loss_fn: LexVLALoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    pixel_values: torch.Tensor,
    captions: Sequence[str],
    step: int,
    *,
    device: torch.device,
    world_size: int = 1,
    precision: str = "auto",
    clip_norm: float | None = 1.0,
) -> dict[str, float]:
    """Run one step; returns the loss parts and the gradient norm (before clipping) as floats."""
    optimizer.zero_grad(set_to_none=True)
    parts = forward_loss(module, loss_fn, pixel_values, captions, step, device, precision)
    (parts["loss"] * world_size).backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if clip_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    result = {k: float(v.detach()) for k, v in parts.items()}
    result["grad_norm"] = float(norm)
    result["logit_scale"] = float(_logit_scale(module).exp())
    return result


def _logit_scale(module: nn.Module) -> torch.Tensor:
    inner: Any = getattr(module, "module", module)  # DDP wraps the TrainModule
    return inner.model.logit_scale.detach()
