"""Pretraining a random tiny DINOv2 on synthetic shapes: dense shape labelling (ours).

Why: LexVLA freezes a *pretrained* DINOv2 and trains only an adapter and a codebook on top
(LEXVLA.md section 4). The tiny preset's DINOv2 is random, and random patch features do not tell
a circle from a square (PatchDis over shape kinds 0.09, below chance). So, before LexVLA
training, the backbone learns what its patches show from the masks the shapes generator draws
anyway, and is then frozen as the paper freezes DINOv2.

Objective: every patch predicts the share of its pixels of each shape kind, colour and size
(soft labels, background included) through linear heads that are thrown away afterwards;
patches holding shape pixels weigh ``1 + foreground_weight * share`` (most patches are
background); and each shape's kind is also predicted from the mean feature of its patches (the
instance term: an interior patch of a large shape sees one flat colour, its kind is only known
from the whole). Samples hold ``min_shapes`` to three shapes and are drawn fresh for every step.

What it reaches (docs/lab-notes.md has the table): held-out patch accuracy on kinds 0.77 after
1500 steps, 0.80-0.89 after 2000 (the preset's), 0.92 after 3000; colours ~1.0 throughout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.backbones import num_prefix_tokens
from model.preprocessing import eval_transform
from training.config import ImagePretrainSettings
from training.data.shape_language import COLOURS, SHAPE_KINDS, SIZES
from training.data.shapes import render_sample

logger = logging.getLogger(__name__)

# label -> number of classes, background (0) included
CLASSES = {"kind": 1 + len(SHAPE_KINDS), "colour": 1 + len(COLOURS), "size": 1 + len(SIZES)}
MAX_SHAPES = 3
TRAIN_SPLIT, CHECK_SPLIT = "pretrain", "pretrain-check"


def patch_shares(mask: np.ndarray, patch: int, classes: int) -> np.ndarray:
    """(S, S) label map -> (L, classes) share of each label's pixels in each patch (row-major
    patches, as the ViT orders its tokens)."""
    grid = mask.shape[0] // patch
    cell = np.arange(mask.shape[0]) // patch
    patch_id = cell[:, None] * grid + cell[None, :]
    counts = np.bincount((patch_id * classes + mask).ravel(), minlength=grid * grid * classes)
    return (counts.reshape(grid * grid, classes) / patch**2).astype(np.float32)


class LabelledShapes(Dataset):
    """Shapes samples as normalised pixels plus per-patch label shares and each shape's kind."""

    def __init__(
        self, size: int, seed: int, split: str, image_size: int, patch: int, min_shapes: int
    ) -> None:
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch {patch}")
        self.size, self.seed, self.split = size, seed, split
        self.image_size, self.patch, self.min_shapes = image_size, patch, min_shapes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = render_sample(
            index, self.seed, self.split, self.image_size, min_shapes=self.min_shapes
        )
        masks, shapes = sample["masks"], sample["shapes"]
        sizes = np.array([0] + [1 + SIZES.index(s.size) for s in shapes], dtype=np.uint8)
        kinds = np.full(MAX_SHAPES, -1, dtype=np.int64)  # -1: no such shape
        kinds[: len(shapes)] = [SHAPE_KINDS.index(s.kind) for s in shapes]
        out = {
            name: torch.from_numpy(patch_shares(masks[name], self.patch, n))
            for name, n in CLASSES.items()
            if name != "size"
        }
        out["size"] = torch.from_numpy(
            patch_shares(sizes[masks["instance"]], self.patch, CLASSES["size"])
        )
        out["instance"] = torch.from_numpy(
            patch_shares(masks["instance"], self.patch, 1 + MAX_SHAPES)[:, 1:]
        )
        out["instance_kind"] = torch.from_numpy(kinds)
        out["pixels"] = eval_transform(sample["image"], self.image_size)
        return out


class ShapeHeads(nn.Module):
    """Linear read-outs of the patch features (discarded after pretraining)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in CLASSES.items()})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(feats) for name, head in self.heads.items()}


def patch_features(vit: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Last-layer patch tokens (after DINOv2's final norm), as the image encoder takes them."""
    return vit(pixel_values=pixels).last_hidden_state[:, num_prefix_tokens(vit) :]


def labelling_loss(
    feats: torch.Tensor,
    heads: ShapeHeads,
    batch: dict[str, torch.Tensor],
    settings: ImagePretrainSettings,
) -> torch.Tensor:
    """Soft-label cross-entropy per patch (foreground weighted) plus the instance kind term."""
    logits = heads(feats)
    weights = {"kind": settings.kind_weight, "colour": settings.colour_weight}
    weights["size"] = settings.size_weight
    loss = feats.new_zeros(())
    for name, weight in weights.items():
        target = batch[name]
        patch_weight = 1 + settings.foreground_weight * (1 - target[..., 0])
        per_patch = -(target * F.log_softmax(logits[name], dim=-1)).sum(-1)
        loss = loss + weight * (per_patch * patch_weight).sum() / patch_weight.sum()
    if settings.instance_weight > 0:
        share = batch["instance"]  # (B, L, shapes)
        pooled = torch.einsum(
            "bls,bld->bsd", share / share.sum(1, keepdim=True).clamp_min(1e-6), feats
        )
        kinds = batch["instance_kind"]
        present = kinds >= 0
        kind_logits = heads.heads["kind"](pooled)[..., 1:]  # foreground kinds only
        loss = loss + settings.instance_weight * F.cross_entropy(
            kind_logits[present], kinds[present]
        )
    return loss


@torch.no_grad()
def patch_accuracy(
    vit: Any, heads: ShapeHeads, dataset: Dataset, batch_size: int = 64
) -> dict[str, float]:
    """Share of shape patches (majority label not background) whose label the heads get right."""
    hits = {name: 0 for name in CLASSES}
    total = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits = heads(patch_features(vit, batch["pixels"]))
        foreground = batch["kind"].argmax(-1) > 0
        total += int(foreground.sum())
        for name in CLASSES:
            predicted = logits[name][..., 1:].argmax(-1) + 1
            hits[name] += int((predicted == batch[name].argmax(-1))[foreground].sum())
    return {name: round(hits[name] / max(total, 1), 4) for name in CLASSES}


def pretrain_image_backbone(
    vit: Any,
    settings: ImagePretrainSettings,
    image_size: int,
    *,
    seed: int = 0,
    num_workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``vit`` (a ``Dinov2Model``) in place; returns timing and held-out patch accuracy."""
    torch.manual_seed(seed)
    patch = int(vit.config.patch_size)
    heads = ShapeHeads(int(vit.config.hidden_size))
    params = [*vit.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1
    )
    data = LabelledShapes(
        settings.steps * settings.batch_size, seed, TRAIN_SPLIT, image_size, patch,
        settings.min_shapes,
    )  # fmt: skip
    loader = DataLoader(
        data,
        batch_size=settings.batch_size,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
    )
    vit.train()
    start = time.perf_counter()
    losses = []
    bar = tqdm(loader, desc="pretraining the image backbone", disable=not progress, leave=False)
    for batch in bar:
        loss = labelling_loss(patch_features(vit, batch["pixels"]), heads, batch, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    vit.eval()
    check = LabelledShapes(128, seed, CHECK_SPLIT, image_size, patch, 1)
    accuracy = patch_accuracy(vit, heads, check)
    logger.info(
        "image backbone pretrained in %.0f s; held-out patch accuracy %s", seconds, accuracy
    )
    return {
        "seconds": round(seconds, 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "heldout_patch_accuracy": accuracy,
    }
