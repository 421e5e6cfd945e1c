"""An estimate (arithmetic, not a measurement) of one GPU's peak memory in a LexVLA training step.

    python bench/memory_estimate.py                       # lexvla-7b, batch 128 per GPU
    python bench/memory_estimate.py --batch 64 128 256 --caption-tokens 20

Terms, for the LoRA setting of ``lexvla-7b`` (bf16 frozen backbones, float32 trained parts,
bf16 autocast, gradient checkpointing on Llama, the shared prompt prefix):

- weights: frozen Llama (without ``lm_head``) and DINOv2 in bf16, the frozen text codebook in
  bf16; trained parts (LoRA, adapter, visual codebook, temperature) as float32 weights, gradients
  and two AdamW moments (16 bytes per parameter);
- Llama activations: gradient checkpointing keeps each layer's bf16 input (B x T x d per layer)
  plus one layer's recomputed working set in the backward (~6 d + 3 d_ff values per token, twice
  for their gradients);
- DINOv2 runs without gradient: one layer's working set (~8 widths per token) at a time;
- adapter: its saved activations (~21 widths' worth per patch token: norms, q/k/v, attention
  output, the 4x MLP, the projection to d);
- patch scores: one vocabulary chunk of B x 256 x chunk in the forward and its gradient in the
  backward (``model.lexical``), plus a bf16 copy of the visual codebook;
- every term is summed, which overstates the peak a little (DINOv2's working set is freed before
  the backward starts); not counted: the CUDA context (~0.5 GB, outside PyTorch's allocator) and allocator
  fragmentation (typically 5-15%), hence the margin the verdict asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import LexVLAConfig, load_preset
from model.params import count_parameters

GB = 1e9
BF16, FP32, ADAMW_STATE = 2, 4, 16  # bytes per value; weight + grad + 2 moments in float32
PROMPT_SUFFIX_TOKENS = 7  # ' " means in one word : "' with Llama 2's tokenizer


def estimate(
    config: LexVLAConfig, batch: int, caption_tokens: int = 20, fits_in_gb: float = 40.0
) -> dict[str, Any]:
    """Peak-memory terms in GB (decimal) for one GPU's ``batch`` samples, and a verdict."""
    parts = count_parameters(config)
    text, image = config.text.arch or {}, config.image.arch or {}
    d, d_ff, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    lm_head = int(text["vocab_size"]) * d
    width = image["hidden_size"]  # DINOv2 runs one layer at a time: its depth adds no memory
    vocab = int(config.vocab_size or 0)
    patches = (config.image.image_size // int(image["patch_size"])) ** 2
    tokens = batch * (caption_tokens + PROMPT_SUFFIX_TOKENS)  # the prefix is shared (once per step)
    image_tokens = batch * patches
    chunk = min(config.image.pool_chunk_size, vocab)
    trained = int(parts["trainable"]["params"])
    terms = {
        "Llama weights (bf16, no lm_head)": (
            int(parts["text backbone (Llama)"]["params"]) - lm_head
        )
        * BF16,
        "DINOv2 weights (bf16)": int(parts["image backbone (DINOv2)"]["params"]) * BF16,
        "text codebook (bf16)": int(parts["text codebook (lm_head rows)"]["params"]) * BF16,
        "trained parts: weights, grads, AdamW (fp32)": trained * ADAMW_STATE,
        "Llama layer inputs kept by checkpointing": tokens * d * layers * BF16,
        "Llama layer recompute in backward": 2 * tokens * (6 * d + 3 * d_ff) * BF16,
        "DINOv2 forward, one layer at a time": (image_tokens + batch) * 8 * width * BF16,
        "adapter saved activations": image_tokens * (21 * width) * BF16 + image_tokens * d * BF16,
        "patch-score chunk + its gradient": 2 * image_tokens * chunk * BF16
        + vocab * d * BF16
        + batch * vocab * 8,
    }
    total = sum(terms.values())
    return {
        "batch": batch,
        "caption_tokens": caption_tokens,
        "terms_gb": {k: round(v / GB, 2) for k, v in terms.items()},
        "total_gb": round(total / GB, 1),
        "fits_gb": fits_in_gb,
        "fits": total / GB < 0.85 * fits_in_gb,  # 15% for the CUDA context and fragmentation
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lexvla-7b")
    parser.add_argument("--batch", type=int, nargs="+", default=[128])
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--gpu-gb", type=float, default=40.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = load_preset(args.preset).with_overrides({"text.train_mode": "lora"})
    for batch in args.batch:
        result = estimate(config, batch, args.caption_tokens, args.gpu_gb)
        if args.json:
            print(json.dumps(result))
            continue
        print(f"batch {batch} per GPU, {args.caption_tokens} caption tokens (ESTIMATE):")
        for name, value in result["terms_gb"].items():
            print(f"  {name:46s} {value:7.2f} GB")
        verdict = "fits" if result["fits"] else "does not fit"
        print(f"  {'total':46s} {result['total_gb']:7.1f} GB: {verdict} in {args.gpu_gb:g} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
