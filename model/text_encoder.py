"""Text encoder: Llama + LoRA on a lexical prediction prompt (the paper's text side).

The caption goes inside the prompt (default ``This sentence : "{caption}" means in one word : "``);
Llama runs on the whole prompt and only the last token's final hidden state is used:
``s_txt = l2norm(elu1p(h_last @ Z_txt.T))``, ``Z_txt`` being the frozen rows of ``lm_head`` (or of
the input embedding) for the vocabulary's token ids.

Tokenization: the prompt's prefix (with BOS), the caption (truncated to ``max_caption_tokens``) and
the suffix are tokenized separately and concatenated, so the prefix tokens are identical for every
caption. Batches are left-padded so the last token sits at position -1, and position ids count
real tokens only, so a caption gets the same vector alone or in any batch.

Inference reuses the prefix: its key/value cache is computed once (per device and weights) and
expanded over the batch, so only the caption and suffix tokens run through Llama; in training
mode (and with ``use_prefix_cache = False``) the whole prompt runs, giving the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import DynamicCache, LlamaForCausalLM

from .config import TextConfig
from .lexical import elu1p, l2norm
from .vocabulary import Vocabulary


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
        if int(ids.max()) >= llm.config.vocab_size:
            raise ValueError(
                f"vocabulary token id {int(ids.max())} is outside the Llama embedding "
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
        self.use_prefix_cache = True
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self._prefix_kv = None  # weights may change from here on: recompute the prefix cache
        return self

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    @property
    def lora_model(self) -> PeftModel | None:
        return self.backbone if isinstance(self.backbone, PeftModel) else None

    def tokenize(self, captions: Sequence[str], prefix: bool = True) -> dict[str, torch.Tensor]:
        """Prompted, left-padded ``input_ids``, ``attention_mask`` and ``position_ids``.

        With ``prefix=False`` the prompt's prefix is left out (it comes from the cache) and the
        positions start after it.
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

    def _prefix_cache(self, batch: int) -> DynamicCache:
        device = self.codebook.device
        kv = self._prefix_kv
        if kv is None or kv[0][0].device != device:
            ids = torch.tensor([self.prefix_ids], device=device)
            with torch.no_grad():
                out = self.backbone(input_ids=ids, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            self._prefix_kv = kv
        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache

    def _last_hidden_cached(self, captions: Sequence[str]) -> torch.Tensor:
        batch = self.tokenize(captions, prefix=False)
        device = self.codebook.device
        n = batch["input_ids"].shape[0]
        mask = torch.cat(
            [torch.ones(n, len(self.prefix_ids), dtype=torch.long), batch["attention_mask"]], 1
        )
        out = self.backbone(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask.to(device),
            position_ids=batch["position_ids"].to(device),
            past_key_values=self._prefix_cache(n),
            use_cache=True,
        )
        return out.last_hidden_state[:, -1]

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        """Dense text lexical vectors (B, V), float32, unit norm."""
        if self.training or not self.use_prefix_cache or not self.prefix_ids:
            h = self.last_hidden(self.tokenize(captions))
        else:
            h = self._last_hidden_cached(captions)
        return l2norm(elu1p((h.to(self.codebook.dtype) @ self.codebook.T).float()))
