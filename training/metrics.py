"""Run logs on rank 0: a JSONL metrics file, an optional TensorBoard writer, a tqdm bar.

``metrics.jsonl`` gets one JSON object per log step::

    {"step": 20, "epoch": 0, "loss": 4.1, "contrastive_loss": 4.0, "image_overuse_loss": 0.01,
     "text_overuse_loss": 0.02, "grad_norm": 1.3, "logit_scale": 14.5, "step_s": 0.15,
     "lr": {"adapter": 1e-4, ...}, "samples_per_s": 210.5, "skipped": {"corrupt_image": 2},
     "skipped_total": 2, "time": 1700000000.0}

Losses, gradient norm, logit scale and step time are means over the steps since the previous
line; ``samples_per_s`` is the global batch over the step time (data wait included, checkpoint
and evaluation time excluded); ``skipped`` counts every sample skipped so far, on all ranks.

and one ``{"step": N, "eval": {...}}`` object per evaluation. A resumed run first drops the lines
written after the checkpoint it resumes from, so the file reads as one uninterrupted run.
TensorBoard is used only when ``torch.utils.tensorboard`` can be imported (the ``tensorboard``
package is an optional extra).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def truncate_after(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` logged at or before ``step`` (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _flat_scalars(prefix: str, value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out |= _flat_scalars(f"{prefix}/{k}" if prefix else str(k), v)
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


class RunLogger:
    """Writes metrics (rank 0 only: other ranks get an inactive logger)."""

    def __init__(
        self,
        output_dir: Path,
        *,
        active: bool,
        start_step: int,
        total_steps: int,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.active = active
        self.path = output_dir / METRICS_FILE
        self.bar: tqdm | None = None
        self.writer: Any = None
        if not active:
            return
        truncate_after(self.path, start_step)
        self.file = self.path.open("a")
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if tensorboard:
            self.writer = _tensorboard_writer(output_dir / "tensorboard")

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {**record, "time": round(time.time(), 3)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = int(record["step"])
            for name, value in _flat_scalars("", record).items():
                if name not in ("step", "time"):
                    self.writer.add_scalar(name, value, step)
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{max(record.get('lr', {0: 0}).values()):.2e}",
                samples_s=f"{record.get('samples_per_s', 0):.1f}",
                refresh=False,
            )

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(str(folder))
