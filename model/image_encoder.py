"""Image encoder: frozen DINOv2 -> adapter -> visual codebook (the paper's image side).

DINOv2's last-layer patch tokens (after its final norm; CLS and register tokens dropped) pass the
trainable adapter; their dot products with the trainable visual codebook (initialised from the
text codebook) are the per-patch word scores. The image vector is ``l2norm(max_l elu1p(...))``;
the patch-level vectors, never supervised, are what locate a word in the image (heat maps,
PatchDis).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapter import Adapter
from .backbones import num_prefix_tokens
from .config import ImageConfig
from .lexical import l2norm, patch_scores, pooled_lexical
from .preprocessing import normalize


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ImageConfig, vit: Any, text_codebook: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.backbone = vit
        self.frozen = not cfg.train_backbone
        for p in vit.parameters():
            p.requires_grad_(not self.frozen)
        self.num_prefix = num_prefix_tokens(vit)
        self.patch_size = int(vit.config.patch_size)
        if cfg.image_size % self.patch_size:
            raise ValueError(
                f"image_size {cfg.image_size} is not a multiple of the patch size {self.patch_size}"
            )
        width = int(vit.config.hidden_size)
        self.adapter = Adapter(
            width, text_codebook.shape[1], cfg.adapter_heads, cfg.adapter_mlp_ratio
        )
        self.codebook = nn.Parameter(text_codebook.detach().clone().float())
        if self.frozen:
            self.backbone.eval()

    @property
    def grid_size(self) -> int:
        """Patches per side (16 for 224 px and patch 14)."""
        return self.cfg.image_size // self.patch_size

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen parts stay in eval mode (no dropout, fixed statistics)
        return self

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size = self.cfg.image_size
        if pixel_values.dim() != 4 or pixel_values.shape[1:] != (3, size, size):
            raise ValueError(
                f"expected pixel values of shape (B, 3, {size}, {size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("empty batch: pass at least one image")

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Adapter outputs ``a_l`` for every patch: (B, L, D_llm).

        ``pixel_values`` are normalised floats (``model.preprocessing.eval_transform``) or raw
        uint8 RGB (``eval_uint8``), which are normalised here, on the model's device, in float32.
        """
        self._check_pixels(pixel_values)
        param = next(self.backbone.parameters())
        if pixel_values.dtype == torch.uint8:
            pixels = normalize(pixel_values.to(param.device, non_blocking=True)).to(param.dtype)
        else:
            pixels = pixel_values.to(device=param.device, dtype=param.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.backbone(pixel_values=pixels).last_hidden_state[:, self.num_prefix :]
        return self.adapter(tokens.to(self.adapter.proj.weight.dtype))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Dense image lexical vectors (B, V), float32, unit norm."""
        feats = self.patch_features(pixel_values)
        return pooled_lexical(feats, self.codebook.to(feats.dtype), self.cfg.pool_chunk_size)

    def patch_scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-patch ``elu1p`` word scores (B, L, V) before normalisation."""
        feats = self.patch_features(pixel_values)
        return patch_scores(feats, self.codebook.to(feats.dtype))

    def patch_vectors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch-level lexical vectors ``l2norm(elu1p(a_l @ Z_img.T))``: (B, L, V)."""
        return l2norm(self.patch_scores(pixel_values))
