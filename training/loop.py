"""The training loop: ``train(config)`` runs a whole (possibly resumed, possibly DDP) run.

Order of one step: next local batch (``training.stream``) -> ``training.step.train_step`` ->
log every ``log_every`` steps -> checkpoint every ``checkpoint.every`` steps and at the end ->
evaluate every ``eval.every`` steps and at the end (rank 0; the others wait). After the last
step, the query table stage (``training.query_table``) when ``query_table.steps > 0``.

A run whose output folder holds checkpoints resumes from the latest one (``resume = "auto"``):
model, optimiser, scheduler, step, data position and RNG states are restored, so a killed run
continues with no manual step and follows the uninterrupted run's trajectory exactly
(``tests/test_training_loop.py`` checks the losses).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data import SkipCounter
from model.losses import LexVLALoss
from training import checkpoints, distributed
from training.config import TrainConfig
from training.data import build_dataset
from training.distributed import DistInfo
from training.metrics import RunLogger
from training.module import TrainModule, wrap_ddp
from training.optim import build_optimizer, build_scheduler, learning_rates
from training.setup import build_model
from training.step import train_step
from training.stream import TrainStream

logger = logging.getLogger(__name__)

StepHook = Callable[[int, dict[str, float]], None]


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from according to ``config.resume``, or None for a fresh run."""
    if config.resume == "never":
        return None
    if config.resume in ("auto", "latest"):
        found = checkpoints.latest_checkpoint(config.output_dir)
        if found is None and config.resume == "latest":
            raise FileNotFoundError(f"--resume: no checkpoint in {config.output_dir}/checkpoints")
        return found
    path = Path(config.resume)
    if not checkpoints.is_complete(path):
        raise FileNotFoundError(f"resume: {path} is not a complete training checkpoint")
    return path


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def grounding_weight(config: TrainConfig) -> float:
    """``loss.grounding``, or 0 in the BoW ablation, whose text vector is the bag of words."""
    if config.data.text_side == "bow":
        if config.loss.grounding > 0:
            logger.info("data.text_side = bow: the text is its bag of words, no grounding loss")
        return 0.0
    return config.loss.grounding


class Trainer:
    """Everything a run holds; ``run()`` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.out = Path(config.output_dir)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_partial(self.out)
        distributed.barrier()
        resume_from = resume_checkpoint(config)
        self.model, self.pretraining = build_model(config, info, resume_from)
        self.loss_fn = LexVLALoss(
            config.loss.penalty,
            config.loss.lambda_image,
            config.loss.lambda_text,
            warmup_steps=config.reg_warmup_steps,
            max_logit_scale=self.model.config.max_logit_scale,
            grounding_weight=grounding_weight(config),
            image_grounding_weight=config.loss.image_grounding,
        )
        self.module = TrainModule(
            self.model, config.data.text_side, config.loss.top_k, bow=self.loss_fn.needs_bow
        ).train()
        self.ddp = wrap_ddp(self.module, info.device) if info.distributed else self.module
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(
            self.optimizer, config.warmup_steps, config.steps, config.optim.min_lr_ratio
        )
        self.stream, self.skips = self._build_stream()
        self.step = 0
        _seed_everything(config.seed + info.rank)
        if resume_from is not None:
            self._restore(resume_from)
        if info.is_main:
            (self.out / checkpoints.CONFIG_FILE).write_text(config.to_json())

    def _build_stream(self) -> tuple[TrainStream, SkipCounter]:
        config, info = self.config, self.info
        if config.batch_size % info.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (global) is not divisible by the world size "
                f"{info.world_size}"
            )
        dataset = build_dataset(
            config.data.train,
            "train",
            seed=config.seed,
            image_size=self.model.config.image.image_size,
            image_root=config.data.image_root,
            rank=info.rank,
            world_size=info.world_size,
            shuffle_buffer=config.data.shuffle_buffer,
        )
        skips = SkipCounter()
        if info.is_main and hasattr(dataset, "skips"):
            skips.update(dataset.skips)  # manifest rows rejected when it was read
        stream = TrainStream(
            dataset,
            config.batch_size // info.world_size,
            image_size=self.model.config.image.image_size,
            augment=config.data.augment,
            seed=config.seed,
            rank=info.rank,
            world_size=info.world_size,
            num_workers=config.data.num_workers,
            pin_memory=info.device.type == "cuda",
        )
        return stream, skips

    # --- checkpoints --------------------------------------------------------------------------
    def _restore(self, path: Path) -> None:
        state = checkpoints.load_state(path)
        if state["world_size"] != self.info.world_size:
            raise ValueError(
                f"{path} was written by a run with {state['world_size']} processes; resume it "
                f"with the same number (this run has {self.info.world_size}), or start a new run "
                "from it with model.start"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.stream.load_state_dict(state["data"][self.info.rank])
        self.skips = SkipCounter(state["skips"][self.info.rank])
        checkpoints.set_rng_state(state["rng"][self.info.rank])
        if self.info.is_main:
            logger.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path | None:
        data = distributed.all_gather_objects(self.stream.state_dict())
        rngs = distributed.all_gather_objects(checkpoints.rng_state())
        skips = distributed.all_gather_objects(self.skips.as_dict())
        path = None
        if self.info.is_main:
            state = {
                "step": self.step,
                "world_size": self.info.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "data": data,
                "rng": rngs,
                "skips": skips,
            }
            path = checkpoints.save(
                self.out,
                self.step,
                self.model,
                state,
                self.config.to_json(),
                self.config.checkpoint.keep_last,
            )
        distributed.barrier()
        return path

    # --- the loop -----------------------------------------------------------------------------
    def global_skips(self) -> dict[str, int]:
        total = SkipCounter()
        for counts in distributed.all_gather_objects(self.skips.as_dict()):
            total.update(counts)
        return total.as_dict()

    def evaluate(self) -> dict[str, Any] | None:
        if self.config.eval.data is None:
            return None
        result = None
        if self.info.is_main:
            from training.evaluation.run import evaluate

            self.module.eval()
            result = evaluate(self.model, self.config.eval, self.config.data.text_side)
            self.module.train()
        distributed.barrier()
        return result

    def _is_due(self, every: int) -> bool:
        return self.step == self.config.steps or (every > 0 and self.step % every == 0)

    def train_one(self) -> dict[str, float]:
        """Fetch a batch and take one step; the result includes its wall time (``step_s``)."""
        start = time.perf_counter()
        batch = self.stream.next_batch()
        self.skips.update(batch["skipped"])
        result = train_step(
            self.ddp,
            self.loss_fn,
            self.optimizer,
            self.scheduler,
            batch["pixel_values"],
            batch["captions"],
            self.step,
            device=self.info.device,
            world_size=self.info.world_size,
            precision=self.config.precision,
            clip_norm=self.config.optim.clip_norm,
        )
        self.step += 1
        return result | {"step_s": time.perf_counter() - start}

    def run(self, on_step: StepHook | None = None) -> dict[str, Any]:
        config = self.config
        log = RunLogger(
            self.out,
            active=self.info.is_main,
            start_step=self.step,
            total_steps=config.steps,
            progress=config.progress,
            tensorboard=config.tensorboard,
        )
        summary: dict[str, Any] = {"start_step": self.step, "pretraining": self.pretraining}
        window: list[dict[str, float]] = []
        try:
            while self.step < config.steps:
                result = self.train_one()
                window.append(result)
                log.advance()
                if self._is_due(config.log_every):
                    log.log(self._record(window))
                    window = []
                if self._is_due(config.checkpoint.every):
                    summary["checkpoint"] = self.save()
                if config.eval.data is not None and self._is_due(config.eval.every):
                    summary["eval"] = self.evaluate()
                    log.log({"step": self.step, "eval": summary["eval"]})
                summary["last"] = result
                if on_step is not None:
                    on_step(self.step, result)
        finally:
            log.close()
            self.stream.close()
        return summary | {"step": self.step, "skipped": self.global_skips()}

    def _record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        """One metrics line: means over the steps since the last one (``training.metrics``)."""
        mean = {k: sum(r[k] for r in window) / len(window) for k in window[-1]}
        skipped = self.global_skips()
        seconds = sum(r["step_s"] for r in window)
        return {
            "step": self.step,
            "epoch": self.stream.epoch,
            **mean,
            "lr": learning_rates(self.optimizer),
            "samples_per_s": len(window) * self.config.batch_size / max(seconds, 1e-9),
            "skipped": skipped,
            "skipped_total": sum(skipped.values()),
        }


def _query_table_stage(config: TrainConfig, info: DistInfo) -> dict[str, Any] | None:
    """The query table stage (``training.query_table``) on the last checkpoint, on rank 0."""
    result = None
    if info.is_main:
        from training.query_table import train_query_table

        last = checkpoints.latest_checkpoint(config.output_dir)
        assert last is not None  # the run always saves its last step
        result = train_query_table(config, last, info.device)
    distributed.barrier()
    return result


def train(config: TrainConfig, on_step: StepHook | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; under torchrun, every process calls this."""
    created = not distributed.is_initialized()
    info = distributed.setup(config.device)
    threads = torch.get_num_threads()
    if config.cpu_threads is not None:
        # Small CPU ops are much slower with a thread pool on a busy machine; tests use 1.
        torch.set_num_threads(config.cpu_threads)
    try:
        summary = Trainer(config, info).run(on_step)
        if config.query_table.steps > 0:
            summary["query_table"] = _query_table_stage(config, info)
        return summary
    finally:
        torch.set_num_threads(threads)
        if created:
            distributed.cleanup()
