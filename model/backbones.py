"""Loading the Hugging Face backbones (wrapped, never re-implemented).

Each backbone comes from ``base`` (a local path or a hub id, resolved at run time) or, when
``base`` is empty, is built with random weights from ``arch`` (tests, GPU benchmarks, the tiny
preset before it is written to disk). Nothing here downloads unless a hub id is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
)

from .config import ImageConfig, TextConfig


class BackboneLoadError(RuntimeError):
    """A backbone or tokenizer could not be loaded from its configured location."""


def resolve(location: str, root: Path | None) -> str:
    """A relative path that exists under ``root`` (a checkpoint folder) wins over a hub id."""
    if root is not None and not Path(location).is_absolute() and (root / location).exists():
        return str(root / location)
    return location


def _fail(what: str, location: str, exc: Exception) -> BackboneLoadError:
    hint = (
        "it is not a local directory"
        if not Path(location).exists()
        else "the directory exists but does not hold a loadable model"
    )
    return BackboneLoadError(
        f"could not load the {what} from {location!r}: {hint} ({type(exc).__name__}: {exc}). "
        "Pass a local path that holds the weights, or a Hugging Face hub id on a machine with "
        "network access."
    )


def load_tokenizer(cfg: TextConfig, root: Path | None = None) -> Any:
    location = cfg.tokenizer or cfg.base
    if location is None:
        raise BackboneLoadError("the text config names no tokenizer (set text.tokenizer or base)")
    location = resolve(location, root)
    try:
        tok = AutoTokenizer.from_pretrained(location)
    except Exception:
        # A folder with only tokenizer.model (as distributed with llama2.c) has no config.
        try:
            tok = LlamaTokenizer.from_pretrained(location)
        except Exception as exc:
            raise _fail("tokenizer", location, exc) from exc
    tok.padding_side = "left"
    return tok


def load_llama(
    cfg: TextConfig, root: Path | None = None, dtype: torch.dtype | None = None
) -> LlamaForCausalLM:
    if cfg.base is None:
        if cfg.arch is None:
            raise BackboneLoadError("the text config has neither base nor arch")
        # Built in its dtype (a 7B model built in float32 first would need 1.5x the memory).
        return LlamaForCausalLM._from_config(LlamaConfig(**cfg.arch), dtype=dtype or torch.float32)
    location = resolve(cfg.base, root)
    try:
        return LlamaForCausalLM.from_pretrained(location, dtype=dtype or torch.float32)
    except Exception as exc:
        raise _fail("text backbone (Llama)", location, exc) from exc


def load_dinov2(
    cfg: ImageConfig, root: Path | None = None, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    if cfg.base is None:
        if cfg.arch is None:
            raise BackboneLoadError("the image config has neither base nor arch")
        return Dinov2Model._from_config(Dinov2Config(**cfg.arch), dtype=dtype or torch.float32)
    location = resolve(cfg.base, root)
    try:
        # AutoModel picks Dinov2Model or Dinov2WithRegistersModel from the saved config.
        model = AutoModel.from_pretrained(location, dtype=dtype or torch.float32)
    except Exception as exc:
        raise _fail("image backbone (DINOv2)", location, exc) from exc
    if "dinov2" not in model.config.model_type:
        raise BackboneLoadError(
            f"{location!r} holds a {model.config.model_type!r} model, not DINOv2"
        )
    return model


def num_prefix_tokens(vit: torch.nn.Module) -> int:
    """CLS plus register tokens, which precede the patch tokens in DINOv2's output."""
    return 1 + int(getattr(vit.config, "num_register_tokens", 0) or 0)
