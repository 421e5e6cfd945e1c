"""The query table stage: distil the text encoder into one sparse row per token (``model.query_table``).

Run by ``lexvla train`` after the main training when ``query_table.steps > 0``, on the run's
last checkpoint, which stays frozen: it is the teacher, and its image vectors are the ones the
index holds. A batch of training pairs gives, from the teacher, each caption's query vector ``t``
(dense, unit norm) and each image's vector ``v``; the student's vector of a caption is
``s = l2norm(sum of its token rows)`` (dense while training; the service's sparse form is the same
vector, thresholded). The objective (ours)::

    L = distill_weight * mean(1 - cos(s, t_kept)) + contrastive_weight * InfoNCE(s, v)

``t_kept`` is ``t`` with the entries at or below the checkpoint's threshold zeroed: the query the
model mode actually serves, so the student is not asked to copy the teacher's many small weights
that no search ever reads. Why two terms: the distillation term carries what the language model
knows and a token alone does not (the words a caption implies, how much each of its words
weighs), but it spends its capacity on every word alike; the contrastive term, with the
teacher's temperature, against the frozen image vectors asks directly for what retrieval needs,
the caption's own image ranked first, in the index's own vector space. (What each term alone
gives on the demo: ``docs/lab-notes.md``.)

Rows start as words mode (a vocabulary token's row is its own word with weight 1, every other
entry 0) and are trained dense with Adam. After every step the entries are projected to be
non-negative, so each row reads as "this token adds these words" and a query's weights are sums
of such additions; over the last ``prune_fraction`` of the steps each row is also cut to its
``top_k`` largest entries (magnitude pruning, once), and the steps after it train only the
entries the file stores. A dense (tokens x V) table is 2.2 GB in float32 for
Llama 2 (32,000 x 17,234), 6.6 GB with Adam's moments: a GPU holds it beside the 7B teacher.

Resuming: every ``every`` steps the table, optimiser, step, data position and RNG states are
written to ``<output_dir>/query_table/state.pt`` (temporary name, then rename), and a killed stage
continues from there. The finished table goes into the checkpoint folder
(``query_table.safetensors``) and the state is deleted; a checkpoint that already has a table
distilled from it with the same settings is left as it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from model import LexVLA
from model.lexical import l2norm
from model.losses import contrastive_loss
from model.query_table import QueryTable, query_token_ids
from model.sparsify import default_threshold
from training import checkpoints
from training.config import QueryTableSettings, TrainConfig
from training.data import build_dataset
from training.step import autocast
from training.stream import TrainStream

logger = logging.getLogger(__name__)

STATE = Path("query_table") / "state.pt"


class TableStudent(nn.Module):
    """The table being trained: a dense (tokens x V) matrix; a text's vector is
    ``l2norm(sum of its token rows)``."""

    def __init__(self, tokenizer: Any, vocabulary: Any) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        weight = torch.zeros(len(tokenizer), len(vocabulary))
        ids = torch.as_tensor(vocabulary.token_ids)
        weight[ids, torch.arange(len(ids))] = 1.0  # start as words mode
        self.weight = nn.Parameter(weight)
        self.support: torch.Tensor | None = None  # the stored entries, once pruning has begun

    def summed(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, V) sums of each text's token rows (``QueryTable.summed``, dense and with grad)."""
        ids = query_token_ids(self.tokenizer, texts)
        device = self.weight.device
        flat = torch.tensor([t for i in ids for t in i], dtype=torch.long, device=device)
        offsets = torch.tensor([0, *[len(i) for i in ids[:-1]]], device=device).cumsum(0)
        return F.embedding_bag(flat, self.weight, offsets, mode="sum")

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return l2norm(self.summed(texts))

    @torch.no_grad()
    def project(
        self, top_k: int | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Entries >= 0. With ``top_k``: the first call fixes each row's support to its ``top_k``
        largest entries, and every call zeroes the rest, in the weights and in the optimiser's
        moments (with Adam's per-entry step size, a pruned entry left a moment would grow back
        by about ``lr`` every step)."""
        self.weight.clamp_(min=0.0)
        if top_k is None or top_k >= self.weight.shape[1]:
            return
        if self.support is None:
            self.support = torch.zeros_like(self.weight, dtype=torch.bool)
            self.support.scatter_(1, self.weight.topk(top_k, dim=1).indices, True)
        self.weight.mul_(self.support)
        for state in optimizer.state.values() if optimizer is not None else ():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == self.weight.shape:
                    value.mul_(self.support)

    @torch.no_grad()
    def export(self, top_k: int) -> sp.csr_matrix:
        """The stored form: each row's ``top_k`` largest positive entries, float32 CSR (the
        selection runs where the table is, on the GPU for a full-size one)."""
        top = self.weight.detach().float().topk(min(top_k, self.weight.shape[1]), dim=1)
        values, cols = top.values.cpu().numpy(), top.indices.cpu().numpy().astype(np.int32)
        keep = values > 0
        indptr = np.concatenate(([0], np.cumsum(keep.sum(axis=1))))
        rows = sp.csr_matrix((values[keep], cols[keep], indptr), shape=tuple(self.weight.shape))
        rows.sort_indices()
        return rows


def teacher_vectors(
    teacher: LexVLA, batch: dict[str, Any], precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(thresholded caption vectors, image vectors) of a batch, float32, no gradient."""
    with torch.inference_mode(), autocast(teacher.device, precision):
        text = teacher.encode_texts(batch["captions"]).float()
        image = teacher.encode_images(batch["pixel_values"].to(teacher.device)).float()
    limit = teacher.config.sparsity.threshold
    limit = default_threshold(text.shape[1]) if limit is None else limit
    kept = torch.where(text > limit, text, torch.zeros((), device=text.device))
    return kept.clone(), image.clone()  # normal tensors: autograd may save them


def table_step(
    student: TableStudent,
    teacher: LexVLA,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    settings: QueryTableSettings,
    precision: str = "auto",
) -> dict[str, float]:
    """One optimiser step on one batch (projection not included); the loss and its parts."""
    target, image = teacher_vectors(teacher, batch, precision)
    s = student(batch["captions"])
    distill = (1.0 - F.cosine_similarity(s, target, dim=1)).mean()
    contrast = contrastive_loss(
        image, s, teacher.logit_scale.detach().float(), teacher.config.max_logit_scale
    )
    loss = settings.distill_weight * distill + settings.contrastive_weight * contrast
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": float(loss.detach()),
        "distill_loss": float(distill.detach()),
        "contrastive_loss": float(contrast.detach()),
    }


def _stream(config: TrainConfig, teacher: LexVLA) -> TrainStream:
    settings = config.query_table
    dataset = build_dataset(
        settings.data or config.data.train,
        "train",
        seed=config.seed,
        image_size=teacher.config.image.image_size,
        image_root=config.data.image_root,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    return TrainStream(
        dataset,
        settings.batch_size,
        image_size=teacher.config.image.image_size,
        augment=config.data.augment,
        seed=config.seed + 1,
        num_workers=config.data.num_workers,
        pin_memory=teacher.device.type == "cuda",
    )


def _meta(teacher: LexVLA, settings: QueryTableSettings) -> dict[str, str]:
    return {"teacher": teacher.checkpoint_id, "settings": settings.model_dump_json()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _teacher(config: TrainConfig, checkpoint: Path, device: torch.device | str) -> LexVLA:
    """The frozen checkpoint; its backbones in bf16 on CUDA (it trains nothing) unless the
    config asks for float32."""
    device = torch.device(device)
    bf16 = device.type == "cuda" and config.model.backbone_dtype != "float32"
    return LexVLA.from_pretrained(
        checkpoint, device=device, backbone_dtype=torch.bfloat16 if bf16 else None
    )


def _resume(
    path: Path,
    meta: dict[str, str],
    student: TableStudent,
    optimizer: torch.optim.Optimizer,
    stream: TrainStream,
) -> int:
    """Restore a saved state of this same stage (teacher and settings); the step to go on from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=student.weight.device, weights_only=False)
    if state.get("meta") != meta:
        logger.info("query table: %s is another teacher's or settings' state; starting over", path)
        return 0
    student.load_state_dict(state["student"])
    student.support = state["support"]
    optimizer.load_state_dict(state["optimizer"])
    stream.load_state_dict(state["data"])
    checkpoints.set_rng_state(state["rng"])
    logger.info("query table: resumed at step %d", state["step"])
    return int(state["step"])


def train_query_table(
    config: TrainConfig, checkpoint: Path, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Distil (or resume distilling) the table of ``checkpoint`` and save it into that folder."""
    settings = config.query_table
    teacher = _teacher(config, checkpoint, device)
    meta = _meta(teacher, settings)
    existing = teacher.query_table
    if existing is not None and all(existing.meta.get(k) == v for k, v in meta.items()):
        return {"reused": True, "path": str(checkpoint)}
    student = TableStudent(teacher.tokenizer, teacher.vocabulary).to(teacher.device)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.lr)
    stream = _stream(config, teacher)
    state_path = Path(config.output_dir) / STATE
    step = _resume(state_path, meta, student, optimizer, stream)
    prune_from = settings.steps - round(settings.prune_fraction * settings.steps)
    start, history = time.perf_counter(), []
    try:
        while step < settings.steps:
            batch = stream.next_batch()
            history.append(
                table_step(student, teacher, optimizer, batch, settings, config.precision)
            )
            step += 1
            student.project(settings.top_k if step > prune_from else None, optimizer)
            if step % settings.every == 0 and step < settings.steps:
                _save_state(state_path, {
                    "meta": meta, "step": step, "student": student.state_dict(),
                    "support": student.support, "optimizer": optimizer.state_dict(),
                    "data": stream.state_dict(), "rng": checkpoints.rng_state(),
                })  # fmt: skip
    finally:
        stream.close()
    table = QueryTable.for_model(student.export(settings.top_k), teacher, meta)
    table.save(checkpoint)
    state_path.unlink(missing_ok=True)
    window = max(1, len(history) // 10)
    return {
        "reused": False,
        "path": str(checkpoint),
        "steps": settings.steps,
        "resumed_at": settings.steps - len(history),
        "seconds": time.perf_counter() - start,
        "first_loss": _mean(history[:window]),
        "last_loss": _mean(history[-window:]),
        "stored_entries": int(table.rows.nnz),
    }


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
    if not window:
        return {}
    return {k: sum(r[k] for r in window) / len(window) for k in window[0]}
