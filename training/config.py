"""The training configuration: pydantic classes, a JSON file plus dotted ``key=value`` overrides.

    lexvla train --config run.json steps=2000 optim.lr_adapter=3e-4 model.overrides.image.image_size=112

``--config`` also takes the name of a built-in preset (:data:`PRESETS`, e.g. ``tiny-shapes``).
Every run writes the resolved configuration (defaults filled in) as ``train_config.json`` into
its output folder and beside every checkpoint, so a run is always reproducible from its files.

The paper gives no optimiser settings, so the defaults are ours: AdamW at 1e-4 for the adapter
and the visual codebook and 2e-4 for LoRA, cosine decay after a linear warm-up, gradient
clipping, the overuse penalty with lambda 1e-3 per modality ramped in quadratically over the
first 10% of steps (SPLADE's practice). Choices that are ours (the paper is silent) are marked
*default* in the field comments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class ModelSettings(_Strict):
    """Where the model comes from and how it is run."""

    start: str = "tiny"  # a model preset name (``tiny``, ``lexvla-7b``) or a checkpoint folder
    overrides: dict[str, Any] = {}  # dotted LexVLAConfig overrides, presets only
    gradient_checkpointing: bool = True  # on Llama, in lora/full text modes
    # The prompt prefix's keys/values computed once per step, only captions run per sample
    # (model.prompt_prefix); false runs the whole prompt per sample (same loss and gradients).
    shared_prefix: bool = True
    backbone_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 frozen on CUDA


class DataSettings(_Strict):
    train: str = "shapes:2000"  # shapes:N, a .csv/.jsonl manifest, or webdataset shards
    image_root: str | None = None  # manifests: folder that relative image paths resolve against
    num_workers: int = Field(default=2, ge=0)
    augment: bool = True  # random resized crop + flip (flips falsify "left of": off for shapes)
    shuffle_buffer: int = Field(default=1000, ge=1)  # shards only
    text_side: Literal["llm", "bow"] = "llm"  # bow: the paper's bag-of-words text ablation


class OptimSettings(_Strict):
    """AdamW groups from ``LexVLA.parameter_groups()``; no decay on temperature, norms, biases."""

    lr_adapter: float = Field(default=1e-4, gt=0)
    lr_visual_codebook: float = Field(default=1e-4, gt=0)
    lr_lora: float = Field(default=2e-4, gt=0)  # text.train_mode == "lora"
    lr_text_full: float = Field(default=1e-3, gt=0)  # "full": random tiny models (*default*)
    lr_image_backbone: float = Field(
        default=1e-3, gt=0
    )  # image.train_backbone (random tiny models)
    lr_temperature: float | None = Field(default=None, gt=0)  # None: the adapter's rate
    weight_decay: float = Field(default=0.1, ge=0)  # *default*, CLIP's
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP's
    eps: float = Field(default=1e-6, gt=0)
    warmup_steps: int | None = Field(default=None, ge=0)  # None: warmup_fraction of the steps
    warmup_fraction: float = Field(default=0.05, ge=0, le=1)
    min_lr_ratio: float = Field(
        default=0.0, ge=0, le=1
    )  # cosine floor as a fraction of each group's lr
    clip_norm: float | None = Field(default=1.0, gt=0)  # None: no clipping


class LossSettings(_Strict):
    penalty: Literal["overuse", "flops", "none"] = "overuse"
    lambda_image: float = Field(default=1e-3, ge=0)
    lambda_text: float = Field(default=1e-3, ge=0)
    reg_warmup_fraction: float = Field(default=0.1, ge=0, le=1)  # quadratic ramp of both lambdas
    top_k: int | None = Field(
        default=None, ge=1
    )  # top-k ablation: train (and index) on top-k vectors
    # Lexical grounding, ours (model.losses.grounding_loss): weight of a cross-entropy that makes
    # the caption's own words the text vector's highest. For randomly initialised text models,
    # whose words otherwise mean nothing (*default* 0: a pretrained Llama grounds its words
    # itself). Not used with data.text_side = "bow", whose text vector is the bag of words.
    grounding: float = Field(default=0.0, ge=0)
    # Image grounding, ours (model.losses.image_grounding_loss): the image vector's highest words
    # are the caption's content words (those its text vector uses), each equally (*default* 0).
    image_grounding: float = Field(default=0.0, ge=0)


class CheckpointSettings(_Strict):
    every: int = Field(default=1000, ge=1)  # steps; the last step is always saved
    keep_last: int = Field(default=3, ge=1)


class EvalSettings(_Strict):
    data: str | None = None  # retrieval (and PatchDis if it has masks); None: no evaluation
    patchdis: str | None = None  # separate PatchDis set (shapes:N or coco:ANNOTATIONS.json)
    image_root: str | None = None
    split: str = "test"  # Karpathy-format JSON files: which split
    every: int = Field(default=0, ge=0)  # steps; 0: only after the last step
    top_k: list[int] = [512, 256, 128, 64, 32, 16]
    batch_size: int = Field(default=32, ge=1)
    max_images: int | None = Field(default=None, ge=1)
    seed: int = 0  # synthetic shapes: the held-out split is "test" with this seed
    background: Literal["ignore", "class"] = "ignore"  # PatchDis background patches


class ImagePretrainSettings(_Strict):
    """Dense shape labelling of a random image backbone (``training.pretrain.image``, ours)."""

    steps: int = Field(default=0, ge=0)  # 0: the backbone is used as it is
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-2, gt=0)  # AdamW, one-cycle schedule (1e-2 beat 3e-3 and 2e-2)
    weight_decay: float = Field(default=0.01, ge=0)
    min_shapes: int = Field(default=3, ge=1, le=3)  # three shapes a sample: more labelled patches
    kind_weight: float = Field(default=1.0, ge=0)
    colour_weight: float = Field(default=0.3, ge=0)
    size_weight: float = Field(default=0.3, ge=0)
    instance_weight: float = Field(default=1.0, ge=0)  # each shape's kind from its mean feature
    foreground_weight: float = Field(default=20.0, ge=0)  # extra weight of patches with a shape


class TextPretrainSettings(_Strict):
    """Language modelling plus lexical prediction for a random Llama (``training.pretrain.text``)."""

    steps: int = Field(default=0, ge=0)  # 0: the text backbone is used as it is
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-2, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    lexical_weight: float = Field(default=0.1, ge=0)  # the shape-word cross-entropy vs the LM's


class PretrainSettings(_Strict):
    """Pretraining the tiny preset's random backbones on synthetic shapes before LexVLA training
    (the paper starts from pretrained DINOv2 and Llama 2). Results are cached by their inputs."""

    image: ImagePretrainSettings = Field(default_factory=ImagePretrainSettings)
    text: TextPretrainSettings = Field(default_factory=TextPretrainSettings)
    cache_dir: str | None = None  # None: <output_dir>/pretrained
    num_workers: int = Field(default=1, ge=0)  # processes drawing the image pretraining samples

    @property
    def enabled(self) -> bool:
        return self.image.steps > 0 or self.text.steps > 0


class QueryTableSettings(_Strict):
    """The query table stage (``training.query_table``), run after the main training on its last
    checkpoint; every value is ours (*default*)."""

    steps: int = Field(default=0, ge=0)  # 0: no table
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=1e-2, gt=0)  # Adam on the table's entries
    top_k: int = Field(default=64, ge=1)  # words kept per token (bench/query_table.py)
    distill_weight: float = Field(default=1.0, ge=0)  # 1 - cos(student, teacher's query vector)
    contrastive_weight: float = Field(default=1.0, ge=0)  # InfoNCE against the frozen images
    prune_fraction: float = Field(default=0.5, ge=0, le=1)  # last part of the steps: top_k rows
    every: int = Field(default=200, ge=1)  # steps between resumable states
    data: str | None = None  # None: data.train


class TrainConfig(_Strict):
    output_dir: str = "runs/lexvla"
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    loss: LossSettings = Field(default_factory=LossSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    query_table: QueryTableSettings = Field(default_factory=QueryTableSettings)
    batch_size: int = Field(default=32, ge=1)  # global: split evenly over the ranks
    steps: int = Field(default=1000, ge=1)
    seed: int = 0
    device: str = "auto"  # auto: cuda:<local rank> if CUDA is available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    cpu_threads: int | None = Field(
        default=None, ge=1
    )  # torch intra-op threads; None: torch's default
    log_every: int = Field(default=10, ge=1)
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # only if the tensorboard package is installed
    resume: str = "auto"  # auto: latest checkpoint in output_dir if any; never; or a folder

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.eval.patchdis is not None and self.eval.data is None:
            raise ValueError("eval.patchdis needs eval.data (the retrieval set) as well")
        return self

    @property
    def warmup_steps(self) -> int:
        o = self.optim
        return o.warmup_steps if o.warmup_steps is not None else int(o.warmup_fraction * self.steps)

    @property
    def reg_warmup_steps(self) -> int:
        return int(self.loss.reg_warmup_fraction * self.steps)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# Built-in configurations, usable as ``--config NAME``.
PRESETS: dict[str, dict[str, Any]] = {
    # The tiny preset on synthetic shapes, made to learn on a CPU in a few minutes. Its random
    # DINOv2 and Llama are first pretrained on shapes (pretrain.*, training.pretrain; cached),
    # then frozen / LoRA-tuned as the paper does; the adapter and codebook train at 20x the
    # paper's rates; 112 px images (8x8 patches) for speed; no flips (they would falsify "left
    # of"); the images are grounded in their captions' content words (loss.image_grounding,
    # ours). How each value was chosen: docs/lab-notes.md.
    "tiny-shapes": {
        "output_dir": "runs/tiny-shapes",
        "model": {
            "start": "tiny",
            "overrides": {
                "image.image_size": 112,
                "image.arch.image_size": 112,
                "text.arch.initializer_range": 0.1,
                "text.train_mode": "lora",
            },
            "gradient_checkpointing": False,
        },
        "pretrain": {"image": {"steps": 2000}, "text": {"steps": 600}},
        "data": {"train": "shapes:4000", "augment": False, "num_workers": 1},
        "loss": {"grounding": 0.0, "image_grounding": 1.0},
        "optim": {
            "lr_adapter": 2e-3,
            "lr_visual_codebook": 2e-3,
            "lr_text_full": 3e-4,
            "lr_temperature": 3e-2,
            "weight_decay": 0.01,
        },
        "batch_size": 32,
        "steps": 400,
        "checkpoint": {"every": 100, "keep_last": 2},
        "eval": {"data": "shapes:200", "top_k": [64, 32, 16, 8]},
        # the query table (training.query_table): its texts use ~5 words, 16 a token is plenty
        "query_table": {"steps": 100, "batch_size": 32, "top_k": 16},
    },
}


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (numbers, true, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (``optim.lr_lora``); ``model.overrides.*`` is free-form."""
    data = json.loads(json.dumps(data))
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[:2] == ["model", "overrides"] and len(parts) > 2:
            data.setdefault("model", {}).setdefault("overrides", {})[".".join(parts[2:])] = value
            continue
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KeyError(f"config key {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def parse_assignments(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def load_config(
    source: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """A preset name or JSON file (or nothing: the defaults), then dotted overrides."""
    data: dict[str, Any] = {}
    if source is not None:
        name = str(source)
        if name in PRESETS:
            data = PRESETS[name]
        elif Path(name).is_file():
            try:
                data = json.loads(Path(name).read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        else:
            raise FileNotFoundError(
                f"no config file {name!r} and no preset of that name (presets: {', '.join(PRESETS)})"
            )
    return TrainConfig.model_validate(apply_overrides(data, overrides or {}))
