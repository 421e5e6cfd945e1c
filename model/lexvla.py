"""LexVLA: both encoders over one vocabulary, plus the learnable contrastive temperature.

Inference API (used by the indexer and the service; ``model.protocols.LexicalModel`` is its type)::

    model = LexVLA.from_pretrained("checkpoints/step-1000", device="cuda", dtype=torch.bfloat16)
    dense = model.encode_texts(["a dog on the beach"])         # (B, V) float32, unit norm
    dense = model.encode_pil([rgb_image])                     # (B, V)
    dense = model.encode_images(uint8_or_float_pixels)        # (B, V), pixels on any device
    rows = model.sparsify(dense)                              # scipy CSR, vocabulary index space
    rows = model.query_table.encode(["a dog"])                # no LLM (None: no table)
    maps = model.patch_vectors(model.preprocess([rgb_image])) # (B, 256, V)
    model.text.enable_static_queries((1,)).warm_up()          # batch-1 queries: CUDA graphs

Training calls ``model(pixel_values, captions)`` and the losses in ``model.losses``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image
from torch import nn

from .backbones import load_dinov2, load_llama, load_tokenizer
from .config import LexVLAConfig
from .image_encoder import ImageEncoder
from .preprocessing import batch_eval
from .query_table import QueryTable
from .sparsify import sparsify
from .text_encoder import TextEncoder
from .vocabulary import Vocabulary


class LexVLA(nn.Module):
    def __init__(
        self,
        config: LexVLAConfig,
        vocabulary: Vocabulary,
        text: TextEncoder,
        image: ImageEncoder,
    ):
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        self.text = text
        self.image = image
        # CLIP's parametrisation: log of the inverse temperature, initialised at 1/0.07.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.checkpoint_id = f"{config.name}-untrained-{vocabulary.short_hash}"
        # The ``table`` query mode (``model.query_table``): loaded with a checkpoint that has one.
        self.query_table: QueryTable | None = None

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: LexVLAConfig,
        root: Path | None = None,
        *,
        expected_vocabulary: Vocabulary | None = None,
        lora_path: str | None = None,
        trainable: bool = True,
        backbone_dtype: torch.dtype | None = None,
    ) -> LexVLA:
        """Build from base weights (or random ``arch``); trained parts freshly initialised."""
        tokenizer = load_tokenizer(config.text, root)
        vocabulary = Vocabulary.from_tokenizer(tokenizer, config.vocabulary_rule)
        where = config.text.tokenizer or config.text.base
        if expected_vocabulary is not None:
            expected_vocabulary.check_matches(vocabulary, "the checkpoint", f"tokenizer {where!r}")
        if config.vocab_size is not None and config.vocab_size != len(vocabulary):
            raise ValueError(
                f"config expects {config.vocab_size} vocabulary words but tokenizer {where!r} "
                f"gives {len(vocabulary)} under rule {config.vocabulary_rule!r}"
            )
        config = config.model_copy(update={"vocab_size": len(vocabulary)})
        llm = load_llama(config.text, root, backbone_dtype)
        text = TextEncoder(config.text, llm, tokenizer, vocabulary, lora_path, trainable)
        vit = load_dinov2(config.image, root, backbone_dtype)
        image = ImageEncoder(config.image, vit, text.codebook)
        return cls(config, vocabulary, text, image)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        revision: str | None = None,
        trainable: bool = False,
        backbone_dtype: torch.dtype | None = None,
    ) -> LexVLA:
        """Load a checkpoint written by ``save_pretrained``: a directory or a hub id.

        ``path`` may be ``org/name`` (or ``org/name@revision``) on the Hugging Face Hub, fetched
        into the hub cache and loaded from there (``model.hub``; ``HF_HUB_OFFLINE=1`` uses only
        the cache).
        """
        from .checkpoint import load_checkpoint
        from .hub import resolve_checkpoint

        return load_checkpoint(
            resolve_checkpoint(path, revision),
            device=device,
            dtype=dtype,
            trainable=trainable,
            backbone_dtype=backbone_dtype,
        )

    def save_pretrained(self, path: str | Path, embed_bases: bool | None = None) -> Path:
        from .checkpoint import save_checkpoint

        return save_checkpoint(self, path, embed_bases=embed_bases)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Save this model (bases embedded when small) and upload it (``model.hub.push_to_hub``)."""
        import tempfile

        from .hub import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "checkpoint")
            return push_to_hub(folder, repo_id, **options)

    def place(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LexVLA:
        """``.to(device, dtype)``, keeping Llama's rotary frequencies in float32.

        ``nn.Module.to(bfloat16)`` would round the ``inv_freq`` buffers too, which shifts the
        rotary angle of position p by up to ~p * 2**-8 radians; transformers itself keeps them in
        float32 when it loads a model in bf16, and so does this.
        """
        rotary = {
            name: buffer.detach().clone()
            for name, buffer in self.named_buffers()
            if name.rsplit(".", 1)[-1] in ("inv_freq", "original_inv_freq")
        }
        self.to(device=device, dtype=dtype)
        for name, value in rotary.items():
            owner, _, leaf = name.rpartition(".")
            module = self.get_submodule(owner)
            module.register_buffer(leaf, value.to(self.device), persistent=False)
        return self

    # --- inference ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.image.codebook.device

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    @property
    def grid_size(self) -> int:
        """Patches per side of :meth:`patch_vectors` (16 for 224 px and patch 14)."""
        return self.image.grid_size

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return batch_eval(images, self.config.image.image_size)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text(texts)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image(pixel_values)

    def encode_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.encode_images(self.preprocess(images))

    @torch.inference_mode()
    def patch_vectors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image.patch_vectors(pixel_values)

    def sparsify(self, dense: torch.Tensor | np.ndarray) -> sp.csr_matrix:
        """Threshold (default ``1/sqrt(V)``) and optional top-k from the config -> float32 CSR."""
        s = self.config.sparsity
        return sparsify(dense, s.threshold, s.top_k)

    # --- training -----------------------------------------------------------------------------
    def forward(
        self, pixel_values: torch.Tensor, captions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Dense image and text vectors of a batch of pairs, and the logit scale (log)."""
        image = self.image(pixel_values)
        text = self.text(captions)
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"{image.shape[0]} images but {text.shape[0]} captions")
        return {"image": image, "text": text, "logit_scale": self.logit_scale}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part (AdamW groups): adapter, visual codebook, text, temperature."""
        groups = {
            "adapter": [p for p in self.image.adapter.parameters() if p.requires_grad],
            "visual_codebook": [self.image.codebook],
            "text": [p for p in self.text.backbone.parameters() if p.requires_grad],
            "image_backbone": [p for p in self.image.backbone.parameters() if p.requires_grad],
            "temperature": [self.logit_scale],
        }
        return {k: v for k, v in groups.items() if v}
