"""Model configuration: small pydantic classes, loaded from JSON presets (open_clip style).

A config names its two backbones by Hugging Face hub id or local path (``base``) and, optionally,
their architecture (``arch``: keyword arguments of ``LlamaConfig`` / ``Dinov2Config``). The
architecture lets us count parameters on the meta device, build random-weight models for tests
and GPU benchmarks, and build the ``tiny`` preset's backbones locally (no download ever).
Relative ``base`` paths in a saved checkpoint config are resolved against the checkpoint folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PROMPT = 'This sentence : "{caption}" means in one word : "'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TextConfig(_Strict):
    """Llama 2 + LoRA text encoder: the caption in a prompt, the last token's hidden state."""

    base: str | None = None  # hub id or local path of a Llama causal LM (with its tokenizer)
    tokenizer: str | None = None  # defaults to ``base``
    arch: dict[str, Any] | None = None  # LlamaConfig kwargs (random init, meta-device counts)
    prompt: str = DEFAULT_PROMPT  # must contain "{caption}" exactly once
    max_caption_tokens: int = Field(64, ge=1)
    codebook: Literal["output", "input"] = "output"  # lm_head rows (default) or input embeddings
    train_mode: Literal["lora", "full", "frozen"] = "lora"
    lora_rank: int = Field(20, ge=1)  # rank 20 on q,k,v,o of Llama-2-7B = 20.97M (the paper's 21M)
    lora_alpha: int = 40
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class ImageConfig(_Strict):
    """Frozen DINOv2 + trainable adapter + trainable visual codebook, max-pooled over patches."""

    base: str | None = None  # hub id or local path of a DINOv2 model
    arch: dict[str, Any] | None = None  # Dinov2Config kwargs
    image_size: int = Field(224, ge=14)
    adapter_heads: int = Field(16, ge=1)
    adapter_mlp_ratio: float = Field(4.0, gt=0)
    train_backbone: bool = False  # the paper freezes DINOv2; only random tiny models may train it
    pool_chunk_size: int = Field(4096, ge=1)  # vocabulary chunk of the patch max-pool


class SparsityConfig(_Strict):
    """Sparsification at indexing and query time (the paper keeps entries above 1/sqrt(V))."""

    threshold: float | None = None  # None: 1/sqrt(V), the paper's
    top_k: int | None = Field(None, ge=1)


class LexVLAConfig(_Strict):
    name: str = "custom"
    text: TextConfig
    image: ImageConfig
    sparsity: SparsityConfig = Field(
        default_factory=lambda: SparsityConfig(threshold=None, top_k=None)
    )
    vocabulary_rule: str = "lower-alpha"
    vocab_size: int | None = None  # expected vocabulary size; checked against the tokenizer
    init_temperature: float = Field(0.07, gt=0)  # CLIP's
    max_logit_scale: float = Field(100.0, gt=0)
    tiny: dict[str, Any] | None = None  # tiny preset only: how to build tokenizer and backbones

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> LexVLAConfig:
        return cls.model_validate_json(Path(path).read_text())

    def with_overrides(self, overrides: dict[str, Any]) -> LexVLAConfig:
        """Return a copy with dotted-key overrides applied (``{"text.lora_rank": 8}``)."""
        data = self.model_dump()
        for key, value in overrides.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise KeyError(f"unknown config key {key!r}")
                node = node[p]
            free_form = bool(parents) and parents[-1] in ("arch", "tiny")  # backbone kwargs
            if leaf not in node and not free_form:
                raise KeyError(f"unknown config key {key!r}")
            node[leaf] = value
        return LexVLAConfig.model_validate(data)


def preset_names() -> list[str]:
    files = resources.files("model") / "presets"
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> LexVLAConfig:
    """A named JSON preset from ``model/presets`` (``lexvla-7b``, ``tiny``)."""
    path = resources.files("model") / "presets" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return LexVLAConfig.model_validate(json.loads(path.read_text()))
