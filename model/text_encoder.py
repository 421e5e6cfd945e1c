"""Text encoder: Llama + LoRA on a lexical prediction prompt (the paper's text side).

The caption goes inside the prompt (default ``This sentence : "{caption}" means in one word : "``);
Llama runs on the whole prompt and only the last token's final hidden state is used:
``s_txt = l2norm(elu1p(h_last @ Z_txt.T))``, ``Z_txt`` being the frozen rows of ``lm_head`` (or of
the input embedding) for the vocabulary's token ids.

Tokenization: the prompt's prefix (with BOS), the caption (truncated to ``max_caption_tokens``) and
the suffix are tokenized separately and concatenated, so the prefix tokens are identical for every
caption. Batches are left-padded so the last token sits at position -1, and position ids count
real tokens only, so a caption gets the same vector alone or in any batch.

The prefix is shared (``model.prompt_prefix``): its keys and values are computed once and only the
caption and suffix tokens run through Llama. At inference they are cached per weights and device;
in training (or whenever gradients flow into Llama) they are computed once per forward, with
their gradient. ``use_prefix_cache = False`` runs the whole prompt per caption instead (the
reference the tests compare against). :meth:`TextEncoder.enable_static_queries` adds the
small-batch path of ``model.query_graphs``: caption-length buckets and, on CUDA, CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlamaForCausalLM

from .config import TextConfig
from .lexical import elu1p, l2norm
from .prompt_prefix import (
    MASKED_IMPLEMENTATIONS,
    PrefixKV,
    mark_cache_read_only,
    prefix_keys_values,
    prefix_mask,
    run_after_prefix,
)
from .query_graphs import StaticQueries
from .vocabulary import Vocabulary

# Caption-length buckets (in caption tokens) of the static-shape query path; the configured
# max_caption_tokens is always the last one.
DEFAULT_LENGTH_BUCKETS = (8, 16, 32, 64)


def split_prompt(prompt: str) -> tuple[str, str]:
    if prompt.count("{caption}") != 1:
        raise ValueError(f"the prompt must contain '{{caption}}' exactly once: {prompt!r}")
    prefix, suffix = prompt.split("{caption}")
    return prefix, suffix


class TextEncoder(nn.Module):
    codebook: torch.Tensor  # (V, D) frozen buffer

    def __init__(
        self,
        cfg: TextConfig,
        llm: LlamaForCausalLM,
        tokenizer: Any,
        vocabulary: Vocabulary,
        lora_path: str | None = None,
        trainable: bool = False,
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        ids = torch.as_tensor(vocabulary.token_ids)
        if max(vocabulary.token_ids) >= llm.config.vocab_size:  # no device sync (or meta)
            raise ValueError(
                f"vocabulary token id {max(vocabulary.token_ids)} is outside the Llama embedding "
                f"({llm.config.vocab_size} rows): tokenizer and text backbone do not match"
            )
        table = llm.lm_head.weight if cfg.codebook == "output" else llm.model.embed_tokens.weight
        # Frozen text codebook; derived from the base weights, so never saved in checkpoints.
        self.register_buffer("codebook", table.detach()[ids].clone(), persistent=False)
        backbone: nn.Module = llm.model  # LlamaModel: the lm_head over 32k pieces is never run
        for p in backbone.parameters():
            p.requires_grad_(cfg.train_mode == "full")
        if cfg.train_mode == "lora":
            if lora_path is not None:
                backbone = PeftModel.from_pretrained(backbone, lora_path, is_trainable=trainable)
            else:
                lora = LoraConfig(
                    r=cfg.lora_rank,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=list(cfg.lora_targets),
                )
                backbone = get_peft_model(backbone, lora)
        self.backbone = backbone
        prefix, suffix = split_prompt(cfg.prompt)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.prefix_ids = bos + self._encode(prefix)
        self.suffix_ids = self._encode(suffix)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.unk_token_id or 0))
        self.attn_implementation = str(getattr(llm.config, "_attn_implementation", None) or "eager")
        mark_cache_read_only(self.backbone)
        self.use_prefix_cache = True
        self.length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
        self.static: StaticQueries | None = None
        self._prefix: PrefixKV | None = None

    def _forget_prefix(self) -> None:
        self._prefix = None
        static = getattr(self, "static", None)  # also when called during __init__
        if static is not None:
            static.clear()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self._forget_prefix()  # weights may change from here on: recompute the prefix cache
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> TextEncoder:
        # .to(device / dtype), .half(), ...: the cached prefix was made by the old weights
        super()._apply(fn, recurse)
        self._forget_prefix()
        return self

    @property
    def prefix_path(self) -> bool:
        """Whether the prefix is shared (else every caption runs the whole prompt)."""
        return (
            self.use_prefix_cache
            and bool(self.prefix_ids)
            and self.attn_implementation in MASKED_IMPLEMENTATIONS
        )

    def static_lengths(self) -> list[int]:
        """Token lengths of the static shapes: each caption bucket plus the suffix."""
        cap = self.cfg.max_caption_tokens
        buckets = sorted({min(b, cap) for b in self.length_buckets} | {cap})
        return [b + len(self.suffix_ids) for b in buckets]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    @property
    def lora_model(self) -> PeftModel | None:
        return self.backbone if isinstance(self.backbone, PeftModel) else None

    def tokenize(
        self, captions: Sequence[str], prefix: bool = True, bucketed: bool = False
    ) -> dict[str, torch.Tensor]:
        """Prompted, left-padded ``input_ids``, ``attention_mask`` and ``position_ids``.

        With ``prefix=False`` the prompt's prefix is left out (it comes from the cache) and the
        positions start after it. ``bucketed`` pads to the next static length
        (:meth:`static_lengths`) instead of the longest caption.
        """
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not a single string")
        if len(captions) == 0:
            raise ValueError("empty batch: pass at least one caption")
        for i, c in enumerate(captions):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"caption at position {i} is empty or not a string: {c!r}")
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        head = self.prefix_ids if prefix else []
        seqs = [
            head + list(ids[: self.cfg.max_caption_tokens]) + self.suffix_ids for ids in encoded
        ]
        length = max(len(s) for s in seqs)
        if bucketed:
            length = next(n + len(head) for n in self.static_lengths() if n + len(head) >= length)
        input_ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, length - len(s) :] = torch.tensor(s)
            mask[row, length - len(s) :] = 1
        offset = 0 if prefix else len(self.prefix_ids)
        positions = offset + (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}

    def last_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.codebook.device
        out = self.backbone(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
        return out.last_hidden_state[:, -1]

    def lexical(self, h_last: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, D) -> dense text lexical vectors (B, V), float32, unit norm."""
        return l2norm(elu1p((h_last.to(self.codebook.dtype) @ self.codebook.T).float()))

    def _compute_prefix(self) -> PrefixKV:
        return prefix_keys_values(
            self.backbone, self.prefix_ids, self.codebook.device, self.attn_implementation
        )

    def prefix_cache(self) -> PrefixKV:
        """The prefix's keys and values for inference: computed once per weights and device."""
        if self._prefix is None or self._prefix.device != self.codebook.device:
            with torch.no_grad():
                self._prefix = self._compute_prefix()
        return self._prefix

    def encode_after_prefix(
        self, tokens: dict[str, torch.Tensor], prefix: PrefixKV
    ) -> torch.Tensor:
        """Vectors of ``tokenize(..., prefix=False)`` output whose tokens attend to ``prefix``."""
        device = prefix.device
        mask = prefix_mask(
            tokens["attention_mask"].to(device),
            prefix.length,
            self.attn_implementation,
            torch.float32,
        )
        ids, positions = tokens["input_ids"].to(device), tokens["position_ids"].to(device)
        return self.lexical(run_after_prefix(self.backbone, prefix, ids, mask, positions)[:, -1])

    def enable_static_queries(
        self, batch_sizes: Sequence[int] = (1,), cuda_graphs: bool = True
    ) -> StaticQueries:
        """Encode batches of up to ``max(batch_sizes)`` captions at static shapes (inference).

        On CUDA each shape is captured once as a CUDA graph (``cuda_graphs``); elsewhere the same
        static-shape code runs eagerly. Call ``.warm_up()`` on the result to capture every shape
        up front (a service does it at start-up, a benchmark before timing).
        """
        if not self.prefix_path:
            raise ValueError(
                "static query shapes need the shared prompt prefix (use_prefix_cache, a prompt "
                f"prefix, and sdpa or eager attention; this model uses {self.attn_implementation!r})"
            )
        self.static = StaticQueries(self, batch_sizes, graphs=cuda_graphs)
        return self.static

    def _grad_into_llama(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        """Dense text lexical vectors (B, V), float32, unit norm."""
        if not self.prefix_path:
            return self.lexical(self.last_hidden(self.tokenize(captions)))
        if self.training or self._grad_into_llama():
            # once per forward (= per step): the weights that make the prefix change every step
            return self.encode_after_prefix(
                self.tokenize(captions, prefix=False), self._compute_prefix()
            )
        if self.static is not None and 0 < len(captions) <= self.static.max_batch:
            return self.static.encode(captions)
        return self.encode_after_prefix(self.tokenize(captions, prefix=False), self.prefix_cache())
