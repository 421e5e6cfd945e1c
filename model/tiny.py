"""The ``tiny`` preset: a LexVLA small enough for CPU tests and the demo, built entirely locally.

No weights can be downloaded here, so the tiny preset builds its three parts itself: a
SentencePiece BPE tokenizer trained on the word list in ``tiny_words.txt`` (same piece
conventions as Llama 2's, so the vocabulary rule applies unchanged), and randomly initialised
Llama and DINOv2 backbones from the preset's ``arch``. They are written to disk and then loaded
through the same ``from_pretrained`` code path as real weights.
"""

from __future__ import annotations

import io
import random
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from .config import LexVLAConfig, load_preset


def tiny_words() -> tuple[list[str], list[str]]:
    """(core words, general words) from ``tiny_words.txt``."""
    text = (resources.files("model") / "tiny_words.txt").read_text()
    blocks: dict[str, list[str]] = {}
    current = "core"
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        elif line and not line.startswith("#"):
            blocks.setdefault(current, []).extend(line.split())
    return blocks.get("shapes", []), blocks.get("general", [])


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 1200, seed: int = 0) -> Any:
    """Train a SentencePiece BPE tokenizer (byte fallback, Llama's special ids) into ``out_dir``."""
    core, general = tiny_words()
    rng = random.Random(seed)
    pool = core * 8 + general
    sentences = []
    for _ in range(4000):
        sentences.append(" ".join(rng.choice(pool) for _ in range(rng.randint(4, 12))))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return tokenizer


def tiny_tokenizer(config: LexVLAConfig, out_dir: Path) -> Any:
    """The tiny model's tokenizer, saved in ``out_dir``: trained on the tiny word list, or the
    SentencePiece tokenizer folder named by ``tiny.tokenizer`` (e.g. the real Llama 2 one, for a
    tiny model whose vocabulary is the real 17,234 words)."""
    assert config.tiny is not None
    source = config.tiny.get("tokenizer")
    if not source:
        seed = int(config.tiny.get("seed", 0))
        return build_tiny_tokenizer(
            out_dir, int(config.tiny.get("tokenizer_vocab_size", 1200)), seed
        )
    tokenizer = LlamaTokenizer.from_pretrained(str(source))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def materialize_tiny(config: LexVLAConfig, out_dir: str | Path) -> LexVLAConfig:
    """Write the tiny tokenizer and random backbones under ``out_dir``; return the config naming them."""
    if config.tiny is None or config.text.arch is None or config.image.arch is None:
        raise ValueError("materialize_tiny needs a config with 'tiny' settings and both archs")
    out = Path(out_dir)
    seed = int(config.tiny.get("seed", 0))
    tokenizer = tiny_tokenizer(config, out / "text")
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(
        LlamaConfig(
            **config.text.arch,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    llm.save_pretrained(str(out / "text"))
    Dinov2Model(Dinov2Config(**config.image.arch)).save_pretrained(str(out / "image"))
    text = config.text.model_copy(update={"base": str(out / "text"), "arch": None})
    image = config.image.model_copy(update={"base": str(out / "image"), "arch": None})
    return config.model_copy(update={"text": text, "image": image})


def with_tiny_vocabulary(config: LexVLAConfig) -> LexVLAConfig:
    """The tiny config with ``vocab_size`` and the Llama vocabulary filled in from its tokenizer."""
    import tempfile

    from .vocabulary import Vocabulary

    assert config.tiny is not None and config.text.arch is not None
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(config, Path(tmp))
    vocab = Vocabulary.from_tokenizer(tokenizer, config.vocabulary_rule)
    text = config.text.model_copy(
        update={"arch": config.text.arch | {"vocab_size": len(tokenizer)}}
    )
    return config.model_copy(update={"vocab_size": len(vocab), "text": text})


def tiny_config(seed: int = 0, overrides: dict[str, Any] | None = None) -> LexVLAConfig:
    config = load_preset("tiny")
    config = config.with_overrides({"tiny.seed": seed} | dict(overrides or {}))
    return config


def create_tiny_model(
    workdir: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None
) -> Any:
    """A random tiny LexVLA whose backbones live under ``workdir`` (returns ``LexVLA``)."""
    from .lexvla import LexVLA

    config = materialize_tiny(tiny_config(seed, overrides), Path(workdir) / "bases")
    torch.manual_seed(seed)
    return LexVLA.from_config(config)


def create_tiny_checkpoint(
    out_dir: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None
) -> Path:
    """A self-contained random tiny checkpoint directory (backbones embedded) at ``out_dir``."""
    out = Path(out_dir)
    work = out.parent / f".{out.name}.bases"
    model = create_tiny_model(work, seed, overrides)
    model.save_pretrained(out, embed_bases=True)
    shutil.rmtree(work, ignore_errors=True)
    return out
