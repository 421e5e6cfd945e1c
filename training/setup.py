"""Building the model a run trains: from a preset, a checkpoint, or the checkpoint it resumes.

- ``model.start`` a preset name: the preset's config with ``model.overrides`` applied. The
  ``tiny`` preset's random tokenizer and backbones are written once under
  ``<output_dir>/bases`` by rank 0 (so checkpoints can embed them) and, if ``pretrain.*`` asks
  for it, pretrained on shapes (``training.pretrain``, cached under ``pretrain.cache_dir``);
  other presets load their base weights from the hub ids or paths the config names.
- ``model.start`` a checkpoint folder or hub id (``org/name``): its weights, a fresh optimiser
  (fine-tuning).
- resuming: the latest (or the named) checkpoint of the run, whatever ``model.start`` says.

Frozen backbones are loaded in bf16 on CUDA (``model.backbone_dtype = auto``); everything that
trains stays float32 (the master weights), and autocast runs the arithmetic in bf16.
Gradient checkpointing on Llama uses the non-reentrant implementation, which works with peft's
LoRA without ``enable_input_require_grads`` (the frozen embeddings need no gradient).
With ``model.shared_prefix`` (the default) the prompt prefix's keys and values are computed once
per step and only the caption tokens run per sample (``model.prompt_prefix``). Presets with
random-weight backbones are built directly on the run's device, in their dtype.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from model import LexVLA, LexVLAConfig, load_preset, preset_names
from model.config import SparsityConfig
from model.hub import is_hub_id, resolve_checkpoint
from training import distributed
from training.config import TrainConfig
from training.distributed import DistInfo

logger = logging.getLogger(__name__)


def backbone_dtype(
    config: TrainConfig, model_config: LexVLAConfig, device: torch.device
) -> torch.dtype:
    choice = config.model.backbone_dtype
    if choice == "auto":
        trains_backbone = (
            model_config.text.train_mode == "full" or model_config.image.train_backbone
        )
        return torch.bfloat16 if device.type == "cuda" and not trains_backbone else torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


def preset_config(
    config: TrainConfig, info: DistInfo
) -> tuple[LexVLAConfig, dict[str, dict[str, Any]]]:
    """The preset's model config with overrides; the tiny preset's bases written (and pretrained,
    if configured) by rank 0. Also the pretraining reports (empty if none)."""
    model_config = load_preset(config.model.start).with_overrides(config.model.overrides)
    if model_config.tiny is None:
        if config.pretrain.enabled:
            raise ValueError(
                f"pretrain.* pretrains the tiny preset's random backbones; preset "
                f"{config.model.start!r} loads pretrained ones: set pretrain.image.steps and "
                "pretrain.text.steps to 0"
            )
        return model_config, {}
    from model.tiny import materialize_tiny

    shared: tuple[str, dict[str, dict[str, Any]]] | None = None
    if info.is_main:
        materialized = materialize_tiny(model_config, Path(config.output_dir) / "bases")
        reports: dict[str, dict[str, Any]] = {}
        if config.pretrain.enabled:
            from training.pretrain import pretrain_backbones

            cache = config.pretrain.cache_dir or Path(config.output_dir) / "pretrained"
            materialized, reports = pretrain_backbones(
                materialized,
                config.pretrain,
                Path(cache),
                seed=config.seed,
                progress=config.progress,
            )
        shared = (materialized.to_json(), reports)
    shared = distributed.broadcast_object(shared)
    assert shared is not None
    return LexVLAConfig.model_validate_json(shared[0]), shared[1]


def _is_checkpoint(start: str) -> bool:
    return Path(start).is_dir()


def build_model(
    config: TrainConfig, info: DistInfo, resume_from: Path | None
) -> tuple[LexVLA, dict[str, dict[str, Any]]]:
    """The model on ``info.device``, trainable, with the run's training-time settings applied,
    and the reports of the backbone pretraining this run did or reused (empty if none)."""
    reports: dict[str, dict[str, Any]] = {}
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    start = str(resume_from) if resume_from is not None else config.model.start
    if is_hub_id(start) and start not in preset_names():  # a checkpoint on the Hugging Face Hub
        start = str(resolve_checkpoint(start))
    if _is_checkpoint(start):
        if config.model.overrides and resume_from is None:
            raise ValueError(
                "model.overrides apply to presets only; a checkpoint's architecture is fixed "
                f"(model.start = {start!r})"
            )
        from model.checkpoint import read_checkpoint_meta

        _, saved = read_checkpoint_meta(start)
        dtype = backbone_dtype(config, saved, info.device)
        model = LexVLA.from_pretrained(start, trainable=True, backbone_dtype=dtype)
    elif config.model.start in preset_names():
        model_config, reports = preset_config(config, info)
        # Writing (and pretraining) the bases draws from the global RNG on rank 0 only, and not
        # at all when the pretraining is reused: re-seed so the initial weights never depend on it.
        torch.manual_seed(config.seed)
        dtype = backbone_dtype(config, model_config, info.device)
        # Random-weight backbones (no ``base``) are created on the run's device: initialising a
        # 7B model on the CPU first would take minutes and twice its size in host memory.
        random = model_config.text.base is None or model_config.image.base is None
        with torch.device(info.device) if random else contextlib.nullcontext():
            model = LexVLA.from_config(model_config, backbone_dtype=dtype)
    else:
        raise ValueError(
            f"model.start {start!r} is neither a checkpoint folder nor a preset "
            f"({', '.join(preset_names())})"
        )
    if config.loss.top_k is not None:  # the top-k ablation: index the way it was trained
        model.config = model.config.model_copy(
            update={
                "sparsity": SparsityConfig(
                    threshold=model.config.sparsity.threshold, top_k=config.loss.top_k
                )
            }
        )
    model.text.use_prefix_cache = config.model.shared_prefix
    if config.model.gradient_checkpointing and config.data.text_side == "llm":
        enable_gradient_checkpointing(model)
    return model.to(info.device).train(), reports


def enable_gradient_checkpointing(model: LexVLA) -> bool:
    """Checkpoint Llama's layers when the text side trains (lora or full); True if enabled."""
    if model.config.text.train_mode == "frozen":
        return False
    text = model.text
    base: Any = text.lora_model.get_base_model() if text.lora_model is not None else text.backbone
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True
