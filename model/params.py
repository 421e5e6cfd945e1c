"""Parameter counts by part, computed on the meta device (no weights are allocated).

For ``lexvla-7b`` this reproduces the paper's sizes: visual codebook 17,234 x 4,096 = 70.6M
(paper: 70M with 17,149 words), adapter 16.8M (paper: 17M), LoRA rank 20 on q/k/v/o 21.0M
(paper: 21M).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

from .adapter import Adapter
from .config import LexVLAConfig


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: LexVLAConfig) -> dict[str, dict[str, int | bool]]:
    """``{part: {"params": n, "trainable": bool}}`` plus ``trainable``/``frozen``/``total`` sums."""
    if config.text.arch is None or config.image.arch is None:
        raise ValueError("parameter counts need the text and image 'arch' of the config")
    if config.vocab_size is None:
        raise ValueError("parameter counts need config.vocab_size (the vocabulary's word count)")
    vocab = config.vocab_size
    mode = config.text.train_mode
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**config.text.arch))
        vit = Dinov2Model(Dinov2Config(**config.image.arch))
        width = llm.config.hidden_size
        adapter = Adapter(
            vit.config.hidden_size,
            width,
            config.image.adapter_heads,
            config.image.adapter_mlp_ratio,
        )
        llm_params = _numel(llm)
        lora = 0
        if mode == "lora":
            lora_cfg = LoraConfig(
                r=config.text.lora_rank, target_modules=list(config.text.lora_targets)
            )
            peft_model = get_peft_model(llm.model, lora_cfg)
            lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    parts: dict[str, dict[str, int | bool]] = {
        "text backbone (Llama)": {"params": llm_params, "trainable": mode == "full"},
        "text codebook (lm_head rows)": {"params": vocab * width, "trainable": False},
        "image backbone (DINOv2)": {
            "params": _numel(vit),
            "trainable": config.image.train_backbone,
        },
        "adapter": {"params": _numel(adapter), "trainable": True},
        "visual codebook": {"params": vocab * width, "trainable": True},
        "temperature": {"params": 1, "trainable": True},
    }
    if mode == "lora":
        parts["LoRA"] = {"params": lora, "trainable": True}
    trainable = sum(int(v["params"]) for v in parts.values() if v["trainable"])
    total = sum(int(v["params"]) for v in parts.values())
    parts["trainable"] = {"params": trainable, "trainable": True}
    parts["frozen"] = {"params": total - trainable, "trainable": False}
    parts["total"] = {"params": total, "trainable": False}
    return parts
