"""LexVLA: unified lexical representations for interpretable vision-language alignment.

Importable without training, index or web dependencies. Start with ``LexVLA.from_pretrained``.

The names below load their modules on first use (:mod:`common.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": ".checkpoint",
    "LexVLA": ".lexvla",
    "LexVLAConfig": ".config",
    "LexicalModel": ".protocols",
    "Vocabulary": ".vocabulary",
    "VocabularyMismatchError": ".vocabulary",
    "bag_of_words": ".bag_of_words",
    "bag_of_words_row": ".bag_of_words",
    "default_threshold": ".sparsify",
    "load_preset": ".config",
    "preset_names": ".config",
    "sparsify": ".sparsify",
}

__all__ = [
    "CheckpointError",
    "LexVLA",
    "LexVLAConfig",
    "LexicalModel",
    "Vocabulary",
    "VocabularyMismatchError",
    "bag_of_words",
    "bag_of_words_row",
    "default_threshold",
    "load_preset",
    "preset_names",
    "sparsify",
]

if TYPE_CHECKING:
    from .bag_of_words import bag_of_words, bag_of_words_row
    from .checkpoint import CheckpointError
    from .config import LexVLAConfig, load_preset, preset_names
    from .lexvla import LexVLA
    from .protocols import LexicalModel
    from .sparsify import default_threshold, sparsify
    from .vocabulary import Vocabulary, VocabularyMismatchError


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
