"""AdamW parameter groups and the learning-rate schedule (cosine after a linear warm-up).

Groups come from ``LexVLA.parameter_groups()`` (adapter, visual codebook, text, image backbone,
temperature), each with its own learning rate; each is split into a decayed part (matrices) and
an undecayed part (biases, norm weights, the temperature: every tensor with fewer than two
dimensions; weight decay on them only pulls them towards zero for no benefit). The visual
codebook is a matrix and is decayed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from model import LexVLA
from training.config import OptimSettings


def group_learning_rates(model: LexVLA, settings: OptimSettings) -> dict[str, float]:
    text = settings.lr_lora if model.config.text.train_mode == "lora" else settings.lr_text_full
    return {
        "adapter": settings.lr_adapter,
        "visual_codebook": settings.lr_visual_codebook,
        "text": text,
        "image_backbone": settings.lr_image_backbone,
        "temperature": settings.lr_temperature or settings.lr_adapter,
    }


def _decays(param: nn.Parameter, group: str) -> bool:
    return group != "temperature" and param.dim() >= 2


def param_groups(model: LexVLA, settings: OptimSettings) -> list[dict[str, Any]]:
    """AdamW groups named ``<part>`` (decayed) and ``<part>/no_decay``; only trainable tensors."""
    rates = group_learning_rates(model, settings)
    groups = []
    for name, params in model.parameter_groups().items():
        params = [p for p in params if p.requires_grad]
        decayed = [p for p in params if _decays(p, name)]
        plain = [p for p in params if not _decays(p, name)]
        for suffix, members, decay in (
            ("", decayed, settings.weight_decay),
            ("/no_decay", plain, 0.0),
        ):
            if members:
                groups.append(
                    {
                        "name": name + suffix,
                        "params": members,
                        "lr": rates[name],
                        "weight_decay": decay,
                    }
                )
    return groups


def build_optimizer(model: LexVLA, settings: OptimSettings) -> torch.optim.AdamW:
    groups = param_groups(model, settings)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, betas=settings.betas, eps=settings.eps, fused=fused or None)


def cosine_with_warmup(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Multiplier of the base rate at ``step``: linear 0 -> 1 over ``warmup``, cosine to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup, total, floor))


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current rate per named group (the decayed and undecayed halves share one)."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        out.setdefault(group["name"].split("/")[0], group["lr"])
    return out
