"""What the training loop runs forward: the LexVLA model in training form, and its DDP wrapper.

``TrainModule`` is a thin ``nn.Module`` around ``LexVLA`` that applies the training-time
choices the model itself knows nothing about:
- the text side ``frozen`` (``text.train_mode``) runs under ``no_grad`` in eval mode;
- the bag-of-words ablation (``data.text_side = "bow"``) replaces the LLM text vector with
  ``model.bag_of_words`` of the caption and freezes the whole text side;
- the top-k ablation (``loss.top_k``) keeps each vector's k largest entries (others zero, the
  kept ones keep their gradient), as the index will when ``sparsity.top_k`` is set.
- with ``bow=True`` (the grounding loss, ``loss.grounding``) the output also holds the captions'
  bag-of-words vectors (``model.bag_of_words``, no gradient) on the model's device. In the BoW
  ablation the text vector already *is* that bag of words, so there is nothing to ground.

Under DDP the gradients are *averaged* over ranks, but ``model.losses`` computes the loss of the
whole gathered batch on every rank so that per-rank gradients *sum* to the single-process one;
``training.step`` therefore scales the backward loss by the world size.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model import LexVLA, bag_of_words


def keep_top_k(x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Zero all but the ``k`` largest entries of each row (gradient flows through the kept)."""
    if k is None or k >= x.shape[-1]:
        return x
    index = x.topk(k, dim=-1).indices
    mask = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, index, True)
    return x * mask


class TrainModule(nn.Module):
    def __init__(
        self, model: LexVLA, text_side: str = "llm", top_k: int | None = None, bow: bool = False
    ):
        super().__init__()
        if text_side not in ("llm", "bow"):
            raise ValueError(f"text_side must be 'llm' or 'bow', got {text_side!r}")
        self.model = model
        self.text_side = text_side
        self.top_k = top_k
        self.bow = bow
        if self.text_frozen:
            model.text.requires_grad_(False)

    @property
    def text_frozen(self) -> bool:
        return self.text_side == "bow" or self.model.config.text.train_mode == "frozen"

    def train(self, mode: bool = True) -> TrainModule:
        super().train(mode)
        if self.text_frozen:
            self.model.text.eval()
        return self

    def bag_of_words(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, V) unit bag-of-words vectors of the captions, on the model's device."""
        model = self.model
        return bag_of_words(captions, model.text.tokenizer, model.vocabulary).to(model.device)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        text = self.model.text
        if self.text_side == "bow":
            return self.bag_of_words(captions)
        if self.text_frozen:
            with torch.no_grad():
                return text(captions)
        return text(captions)

    def forward(
        self, pixel_values: torch.Tensor, captions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        image = self.model.image(pixel_values.to(self.model.device))
        text = self.encode_text(captions)
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"{image.shape[0]} images but {text.shape[0]} captions")
        out = {
            "image": keep_top_k(image.float(), self.top_k),
            "text": keep_top_k(text.float(), self.top_k),
            # A copy, not the parameter itself: DDP with find_unused_parameters walks the graph
            # from the outputs and would take a bare leaf for an unused parameter.
            "logit_scale": self.model.logit_scale.clone(),
        }
        if self.bow:
            out["bow"] = self.bag_of_words(captions)
        return out


def frozen_state_names(module: nn.Module) -> list[str]:
    """Names of parameters that need no gradient, and of all buffers (the frozen codebook)."""
    names = [n for n, p in module.named_parameters() if not p.requires_grad]
    return names + [n for n, _ in module.named_buffers()]


def wrap_ddp(module: TrainModule, device: torch.device) -> DistributedDataParallel:
    """DDP over the trainable parameters only.

    Frozen weights and buffers are identical on every rank (same files, same seed), so they are
    left out of DDP's start-up broadcast (7B of frozen Llama would otherwise cross the network)
    and buffers are not re-broadcast every step. DINOv2's ``mask_token`` is never used, so a
    trained image backbone needs ``find_unused_parameters``.
    """
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, frozen_state_names(module)
    )
    # Buffers are all in the ignore list: never synchronised (``broadcast_buffers`` is the
    # pre-2.12 spelling of ``forward_sync_buffers``).
    options: dict[str, Any] = {
        "device_ids": [device.index] if device.type == "cuda" else None,
        "find_unused_parameters": not module.model.image.frozen,
    }
    sync_option = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    options[sync_option] = False
    return DistributedDataParallel(module, **options)
