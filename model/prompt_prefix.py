"""The prompt prefix every caption shares: its keys and values computed once, reused in every layer.

Each caption sits in the same prompt, after the same prefix (BOS + ``This sentence : "``). Attention
is causal, so the prefix's hidden states, keys and values are the same for every caption: they are
computed once (batch 1, :func:`prefix_keys_values`) and prepended to each layer's keys and values
while only the caption and suffix tokens run through Llama (:func:`run_after_prefix`).

- Inference computes them once per weights and device and keeps them (``TextEncoder``).
- Training computes them once per forward, i.e. once per step, with their gradient: LoRA (or full
  fine-tuning) changes them every step. The batch reads them through an ``expand``ed view, so
  their gradient is the sum of every sample's, exactly as when each sample ran its own copy
  (``tests/test_training_shared_prefix.py`` checks loss and gradients against the full prompt).

Only the prefix can be shared: the suffix (``" means in one word : "``) comes after the caption and
attends to it. With the default prompt and Llama 2's tokenizer the prefix is 5 tokens (BOS
included) and the suffix 7, so a 20-token caption runs 27 tokens instead of 32 (16% fewer); a
prompt that puts more of its words before the caption would share more.

Why our own two small cache objects rather than transformers' ``DynamicCache``:

1. They never mutate what they return: ``_Prepend.update`` returns prefix + new keys without
   storing anything, so gradient checkpointing's recompute sees exactly the keys of the first pass
   (a ``DynamicCache`` would append a second time) and a CUDA graph can replay the call. Because
   they only read, the decoder layers are marked ``_can_checkpoint_with_cache`` (transformers
   otherwise drops any cache inside a checkpointed layer), and every call counts its layer
   updates so that a transformers version that drops the cache anyway fails loudly instead of
   silently encoding captions without their prefix.
2. The attention mask is built here, 4-D (:func:`prefix_mask`), so transformers' mask creation
   does no data-dependent host synchronisation (its ``mask.all()`` shortcut), which CUDA graph
   capture forbids and which costs a sync per call otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Attention implementations that take a 4-D mask (flash attention takes 2-D masks only).
MASKED_IMPLEMENTATIONS = ("sdpa", "eager")


class PrefixKV:
    """Per-layer keys and values of the prompt prefix: tensors of shape (1, heads, P, head_dim)."""

    def __init__(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]):
        self.keys, self.values = list(keys), list(values)

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2])

    @property
    def device(self) -> torch.device:
        return self.keys[0].device


class _ReadOnlyCache:
    """What Llama's attention calls: ``update`` per layer; counts the calls (see above)."""

    def __init__(self) -> None:
        self.calls = 0

    def get_seq_length(self, *_: Any) -> int:
        return 0

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return self.layer(key_states, value_states, layer_idx)

    def layer(
        self, keys: torch.Tensor, values: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _Record(_ReadOnlyCache):
    """The prefix pass: keeps each layer's keys and values, returns them unchanged."""

    def __init__(self, layers: int):
        super().__init__()
        self.keys: list[Any] = [None] * layers
        self.values: list[Any] = [None] * layers

    def layer(
        self, keys: torch.Tensor, values: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[index], self.values[index] = keys, values
        return keys, values


class _Prepend(_ReadOnlyCache):
    """The caption pass: each layer attends to the prefix's keys and values, then its own."""

    def __init__(self, prefix: PrefixKV):
        super().__init__()
        self.prefix = prefix

    def get_seq_length(self, *_: Any) -> int:
        return self.prefix.length

    def layer(
        self, keys: torch.Tensor, values: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = keys.shape[0]
        before_k = self.prefix.keys[index].to(keys.dtype).expand(batch, -1, -1, -1)
        before_v = self.prefix.values[index].to(values.dtype).expand(batch, -1, -1, -1)
        return torch.cat([before_k, keys], dim=-2), torch.cat([before_v, values], dim=-2)


def _cache_keyword(backbone: nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x)."""
    model: Any = backbone
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def mark_cache_read_only(backbone: nn.Module) -> None:
    """Keep our (read-only) caches inside gradient-checkpointed decoder layers (see above)."""
    for module in backbone.modules():
        if hasattr(type(module), "_can_checkpoint_with_cache"):
            setattr(module, "_can_checkpoint_with_cache", True)  # noqa: B010


def prefix_mask(
    caption_mask: torch.Tensor, prefix_length: int, implementation: str, dtype: torch.dtype
) -> torch.Tensor:
    """4-D mask (B, 1, L, P + L): every token sees the prefix, then the real caption tokens up to it.

    ``caption_mask`` (B, L) is 1 for real tokens, 0 for left padding. A padding row still sees the
    prefix, so no softmax row is empty. sdpa takes the boolean mask, eager attention an additive one.
    """
    batch, length = caption_mask.shape
    device = caption_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    own = causal[None] & caption_mask.bool()[:, None, :]
    seen = torch.ones(batch, length, prefix_length, dtype=torch.bool, device=device)
    allowed = torch.cat([seen, own], dim=-1)[:, None]
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        # torch.full, not torch.tensor: no host-to-device copy (which CUDA graph capture forbids)
        blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
        return torch.zeros((), dtype=dtype, device=device).where(allowed, blocked)
    raise ValueError(
        f"the shared prompt prefix needs attention that takes a 4-D mask "
        f"({', '.join(MASKED_IMPLEMENTATIONS)}), not {implementation!r}"
    )


def _layers(backbone: nn.Module) -> int:
    config: Any = backbone.config
    return int(config.num_hidden_layers)


def _check_calls(calls: int, layers: int) -> None:
    if calls != layers:
        raise RuntimeError(
            f"the prompt prefix reached {calls} of {layers} Llama layers: this transformers version "
            "drops the key/value cache inside (gradient-checkpointed) layers. Set "
            "text encoder use_prefix_cache = False (training: model.shared_prefix=false)."
        )


def prefix_keys_values(
    backbone: nn.Module,
    prefix_ids: Sequence[int],
    device: torch.device,
    implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> PrefixKV:
    """Run the prefix alone (batch 1) and keep every layer's keys and values (with their gradient)."""
    record = _Record(_layers(backbone))
    ids = torch.tensor([list(prefix_ids)], device=device)
    mask = prefix_mask(torch.ones_like(ids), 0, implementation, dtype)
    backbone(
        input_ids=ids,
        attention_mask=mask,
        position_ids=torch.arange(ids.shape[1], device=device)[None],
        use_cache=False,
        **{_cache_keyword(backbone): record},
    )
    _check_calls(record.calls, _layers(backbone))
    return PrefixKV(record.keys, record.values)


def run_after_prefix(
    backbone: nn.Module,
    prefix: PrefixKV,
    input_ids: torch.Tensor,
    mask4d: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states (B, L, D) of caption + suffix tokens that attend to ``prefix``."""
    prepend = _Prepend(prefix)
    out = backbone(
        input_ids=input_ids,
        attention_mask=mask4d,
        position_ids=position_ids,
        use_cache=False,
        **{_cache_keyword(backbone): prepend},
    )
    _check_calls(prepend.calls, _layers(backbone))
    return out.last_hidden_state
