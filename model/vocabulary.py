"""The lexical vocabulary: which tokenizer pieces are words, and how they are shown.

LexVLA's vectors have one entry per *word* of a vocabulary cut out of the Llama 2 tokenizer.
The paper removes "meaningless" tokens and keeps 17,149 of 32,000 but does
not say how; our rule (``lower-alpha``, a documented default) keeps every piece whose text, with
SentencePiece's leading "▁" stripped, is ASCII lower-case letters. On the real Llama 2 tokenizer
that keeps 17,234 pieces.

Index space: position ``i`` of a lexical vector is ``token_ids[i]`` of the tokenizer. A word-initial
piece "▁dog" is displayed as ``dog``; a continuation piece "dog" (the end of a longer word) is a
different token with a different codebook row, and is displayed as ``·dog`` so that no explanation
shows two identical-looking words.

The vocabulary is saved next to every checkpoint and index as ``vocabulary.json``; its ``hash``
(sha256 over ids and pieces) is how an index proves it was built with the model that serves it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPIECE_SPACE = "▁"
CONTINUATION_MARK = "·"
RULES = {"lower-alpha": re.compile(r"▁?[a-z]+")}
FILE_NAME = "vocabulary.json"


class VocabularyMismatchError(ValueError):
    """Two components (checkpoint, tokenizer, index) were built with different vocabularies."""


class Vocabulary:
    """Kept tokenizer ids in index order, their pieces, display words and a stable hash."""

    def __init__(self, token_ids: Sequence[int], pieces: Sequence[str], rule: str = "lower-alpha"):
        if len(token_ids) != len(pieces):
            raise ValueError(f"{len(token_ids)} token ids but {len(pieces)} pieces")
        if not token_ids:
            raise ValueError("a vocabulary needs at least one word")
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.pieces = list(pieces)
        self.rule = rule
        self.words = [display_word(p) for p in self.pieces]
        self._index_of_word = {w: i for i, w in enumerate(self.words)}
        self._index_of_token = {int(t): i for i, t in enumerate(self.token_ids)}
        if len(self._index_of_word) != len(self.words):
            raise ValueError("vocabulary has duplicate pieces")
        self.hash = _hash(self.token_ids, self.pieces, rule)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pieces(cls, all_pieces: Sequence[str], rule: str = "lower-alpha") -> Vocabulary:
        """Keep the pieces of a full tokenizer vocabulary (id = position) that ``rule`` accepts."""
        if rule not in RULES:
            raise ValueError(f"unknown vocabulary rule {rule!r}; known: {sorted(RULES)}")
        pattern = RULES[rule]
        kept = [(i, p) for i, p in enumerate(all_pieces) if pattern.fullmatch(p)]
        if not kept:
            raise ValueError(f"rule {rule!r} keeps no piece of this tokenizer")
        return cls([i for i, _ in kept], [p for _, p in kept], rule)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, rule: str = "lower-alpha") -> Vocabulary:
        """Build from a Hugging Face (SentencePiece-based) tokenizer such as Llama 2's."""
        n = len(tokenizer)
        return cls.from_pieces(tokenizer.convert_ids_to_tokens(list(range(n))), rule)

    # --- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "size": len(self),
            "hash": self.hash,
            "token_ids": self.token_ids.tolist(),
            "pieces": self.pieces,
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Load ``vocabulary.json`` (or the directory holding it) and verify its stored hash."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {path}")
        try:
            data = json.loads(path.read_text())
            vocab = cls(data["token_ids"], data["pieces"], data.get("rule", "lower-alpha"))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a valid vocabulary file: {exc}") from exc
        if data.get("hash") not in (None, vocab.hash):
            raise VocabularyMismatchError(
                f"{path} is corrupt: stored hash {data['hash']} but its contents hash to {vocab.hash}"
            )
        return vocab

    # --- lookups ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, rule={self.rule!r}, hash={self.short_hash})"

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def index(self, word: str) -> int:
        """Index of a display word (``dog``, ``·dog``) or a raw piece (``▁dog``); KeyError if absent."""
        if word.startswith(SPIECE_SPACE):
            word = word[1:]
        elif not word.startswith(CONTINUATION_MARK) and word not in self._index_of_word:
            word = word.lower()
        try:
            return self._index_of_word[word]
        except KeyError:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self)} words)") from None

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        try:
            self.index(word)
        except KeyError:
            return False
        return True

    def index_of_token(self, token_id: int) -> int | None:
        """Index of a tokenizer id, or None if the piece is not a vocabulary word."""
        return self._index_of_token.get(int(token_id))

    def indices_of_tokens(self, token_ids: Iterable[int]) -> list[int]:
        """Vocabulary indices of the ids that are words, in order (others dropped)."""
        return [i for t in token_ids if (i := self._index_of_token.get(int(t))) is not None]

    def check_matches(self, other: Vocabulary, what: str, other_what: str) -> None:
        """Raise VocabularyMismatchError naming both sides if the two vocabularies differ."""
        if self.hash != other.hash:
            raise VocabularyMismatchError(
                f"vocabulary mismatch: {what} has {len(self)} words (hash {self.short_hash}) but "
                f"{other_what} has {len(other)} words (hash {other.short_hash}); they were built "
                "from different tokenizers or vocabulary rules. Use the matching checkpoint, or "
                "rebuild the index with this model (`lexvla index build`)."
            )


def display_word(piece: str) -> str:
    """``▁dog`` -> ``dog`` (word-initial); ``dog`` -> ``·dog`` (continuation piece)."""
    if piece.startswith(SPIECE_SPACE):
        return piece[len(SPIECE_SPACE) :]
    return CONTINUATION_MARK + piece


def _hash(token_ids: np.ndarray, pieces: Sequence[str], rule: str) -> str:
    h = hashlib.sha256(rule.encode())
    for t, p in zip(token_ids.tolist(), pieces, strict=True):
        h.update(f"\n{t}\t{p}".encode())
    return h.hexdigest()
