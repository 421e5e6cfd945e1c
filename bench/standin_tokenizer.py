"""A stand-in for the Llama 2 tokenizer with its shapes, for full-size benchmarks without it.

The full-size benchmarks need Llama 2's tokenizer only for its sizes: 32,000 pieces (the
embedding and ``lm_head`` rows) and the 17,234 pieces the vocabulary rule keeps (the codebooks,
whose size sets the cost of the patch scores and of the text projection). When
``../shared/data/llama2-tokenizer`` is not on the machine (a bare GPU box), :func:`write_standin`
writes a SentencePiece model with exactly those counts: Llama's special and byte pieces, 17,234
lower-case alphabetic pieces (the letters, then word-initial pieces closed under prefixes: the
benchmarks' English caption words, the prompt's words, random letter strings) and other pieces
up to 32,000. It is a BPE model like Llama 2's, built directly as a ``ModelProto`` (no training:
instant and deterministic), whose scores merge shorter pieces first. Captions made of
:data:`ENGLISH` words tokenize to one piece per word, as common English words do with Llama 2.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_model

PIECES = 32_000
KEPT = 17_234  # what the "lower-alpha" rule keeps of the real Llama 2 tokenizer
ENGLISH = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "to",
    "with",
    "and",
    "next",
    "by",
    "near",
    "under",
    "over",
    "left",
    "right",
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "children",
    "people",
    "group",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "brown",
    "small",
    "large",
    "big",
    "ball",
    "beach",
    "street",
    "park",
    "grass",
    "water",
    "snow",
    "field",
    "road",
    "car",
    "bike",
    "tree",
    "house",
    "runs",
    "jumps",
    "sits",
    "stands",
    "holding",
    "playing",
    "wearing",
    "walking",
    "looking",
    "through",
    "along",
    "front",
    "this",
    "sentence",
    "means",
    "one",
    "word",
]
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def _word_pieces(count: int, seed: int) -> list[str]:
    """``count`` word-initial pieces, closed under prefixes (so BPE merges reach every one)."""
    rng = random.Random(seed)
    pieces: dict[str, None] = {}

    def add_word(word: str) -> None:
        for end in range(1, len(word) + 1):
            if len(pieces) < count:
                pieces.setdefault(f"▁{word[:end]}")

    for word in [*string.ascii_lowercase, *ENGLISH]:
        add_word(word)
    while len(pieces) < count:
        add_word("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
    return list(pieces)


def write_standin(folder: str | Path, seed: int = 0) -> Path:
    """Write ``tokenizer.model`` (Llama 2's piece counts) into ``folder``; returns the folder."""
    proto = sp_model.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = 2  # BPE, as Llama 2's (transformers converts it to a merge table)
    spec.vocab_size, spec.byte_fallback = PIECES, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True

    def add(piece: str, kind: int = _NORMAL, score: float = -1.0) -> None:
        entry = proto.pieces.add()
        entry.piece, entry.type, entry.score = piece, kind, score

    add("<unk>", _UNKNOWN, 0.0)
    add("<s>", _CONTROL, 0.0)
    add("</s>", _CONTROL, 0.0)
    for byte in range(256):
        add(f"<0x{byte:02X}>", _BYTE, 0.0)
    # single letters (continuation pieces) and prefix-closed words: BPE scores merge short first
    kept = list(string.ascii_lowercase) + _word_pieces(KEPT - 26, seed)
    others = ["▁", '"', ":", ",", ".", "▁:", '▁"', *string.ascii_uppercase, *string.digits]
    others += ["▁T", "▁Th", "▁Thi", "▁This"]
    for piece in kept + others:
        add(piece, score=-float(len(piece)))
    number = 0
    while len(proto.pieces) < PIECES:  # filler pieces nothing reaches
        add(f"<unused{number}>", score=-100.0)
        number += 1
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    return out
