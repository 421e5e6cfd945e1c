"""What the indexer and the service need of a model: a small structural type.

:class:`LexicalModel` lists the calls they make (encode texts, images and pixel batches, sparsify, the
vocabulary and config, patch vectors for heat maps, the query table); ``model.LexVLA`` implements it, and so can a
stand-in in a test or another encoder with the same vocabulary-space outputs. Annotating with it
instead of ``Any`` lets mypy check every call site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image

from .config import LexVLAConfig
from .query_table import QueryTable
from .vocabulary import Vocabulary


@runtime_checkable
class LexicalModel(Protocol):
    """Texts and images -> lexical vectors over one vocabulary (see ``model.lexvla``)."""

    config: LexVLAConfig
    vocabulary: Vocabulary
    checkpoint_id: str
    query_table: QueryTable | None  # the ``table`` query mode; None: the checkpoint has none

    @property
    def tokenizer(self) -> Any:
        """The text tokenizer (the service's ``words`` mode uses it without the language model)."""
        ...

    @property
    def grid_size(self) -> int:
        """Patches per side of :meth:`patch_vectors` (16 for 224 px and patch 14)."""
        ...

    def eval(self) -> Any: ...

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> pixel values (B, 3, S, S), the encoder's centre crop."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Dense text vectors (B, V), unit norm."""
        ...

    def encode_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Dense image vectors (B, V), unit norm."""
        ...

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Dense image vectors (B, V) of pixel values: normalised floats or raw uint8 RGB."""
        ...

    def patch_vectors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch-level vectors (B, grid_size**2, V)."""
        ...

    def sparsify(self, dense: torch.Tensor | np.ndarray) -> sp.csr_matrix:
        """Dense rows -> float32 CSR rows with the checkpoint's threshold and top-k."""
        ...
