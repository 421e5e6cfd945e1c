"""LexVLA: unified lexical representations for interpretable vision-language alignment.

Importable without training, index or web dependencies. Start with ``LexVLA.from_pretrained``.
"""

from .bag_of_words import bag_of_words
from .checkpoint import CheckpointError
from .config import LexVLAConfig, load_preset, preset_names
from .lexvla import LexVLA
from .protocols import LexicalModel
from .sparsify import default_threshold, sparsify
from .vocabulary import Vocabulary, VocabularyMismatchError

__all__ = [
    "CheckpointError",
    "LexVLA",
    "LexVLAConfig",
    "LexicalModel",
    "Vocabulary",
    "VocabularyMismatchError",
    "bag_of_words",
    "default_threshold",
    "load_preset",
    "preset_names",
    "sparsify",
]
