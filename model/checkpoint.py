"""Checkpoint directories: what ``save_pretrained`` writes and ``from_pretrained`` reads.

Layout (format version 1)::

    checkpoint.json          format, version, checkpoint id (name + content hash), date
    config.json              LexVLAConfig: base model ids or paths (relative = inside this folder)
    vocabulary.json          kept token ids and pieces, with their hash
    lexvla.safetensors       adapter.*, visual_codebook, logit_scale (+ image_backbone.* if trained)
    text_lora/               peft LoRA adapter (text.train_mode == "lora")
    text_model.safetensors   the whole Llama body (text.train_mode == "full")
    bases/text, bases/image  the base backbones, when embedded (small or random models)
    query_table.safetensors  optional: the ``table`` query mode's rows (``model.query_table``);
                             not part of the checkpoint id, as it changes no image vector

The text codebook is not saved: it is the base Llama's ``lm_head`` rows for the vocabulary, frozen.
A checkpoint is written to a temporary sibling folder and renamed into place, so a reader never
sees half of one. Loading checks that every file is present, that the tensors have the expected
names and shapes, and that the vocabulary rebuilt from the tokenizer matches ``vocabulary.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from common.atomic import replace_directory, temp_path

from .backbones import resolve
from .config import LexVLAConfig
from .vocabulary import Vocabulary, VocabularyMismatchError

if TYPE_CHECKING:
    from .lexvla import LexVLA

FORMAT = "lexvla-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "lexvla.safetensors"
EMBED_LIMIT_BYTES = 512 * 2**20  # bases smaller than this are copied into the checkpoint


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


def _required_files(config: LexVLAConfig) -> list[str]:
    files = ["checkpoint.json", "config.json", "vocabulary.json", WEIGHTS]
    if config.text.train_mode == "lora":
        files += ["text_lora/adapter_config.json", "text_lora/adapter_model.safetensors"]
    elif config.text.train_mode == "full":
        files.append("text_model.safetensors")
    return files


def _trained_tensors(model: LexVLA) -> dict[str, torch.Tensor]:
    tensors = {f"adapter.{k}": v for k, v in model.image.adapter.state_dict().items()}
    tensors["visual_codebook"] = model.image.codebook.data
    tensors["logit_scale"] = model.logit_scale.data.reshape(1)
    if not model.image.frozen:
        tensors |= {f"image_backbone.{k}": v for k, v in model.image.backbone.state_dict().items()}
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _embed(location: str | None, dest: Path, embed: bool | None) -> str | None:
    """Copy a local base folder into the checkpoint if asked (None: if small); return its name."""
    if location is None:
        raise CheckpointError("cannot save a model whose backbone was built in memory from 'arch'")
    src = Path(location)
    if not src.is_dir() or embed is False:
        return location
    if embed is None and _dir_size(src) > EMBED_LIMIT_BYTES:
        return str(src.resolve())
    shutil.copytree(src, dest)
    return str(dest.relative_to(dest.parent.parent))


def save_checkpoint(model: LexVLA, path: str | Path, embed_bases: bool | None = None) -> Path:
    final = Path(path)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = model.config
    text_base = _embed(cfg.text.base, tmp / "bases" / "text", embed_bases)
    tok = cfg.text.tokenizer
    if tok is not None and tok != cfg.text.base:
        tok = _embed(tok, tmp / "bases" / "tokenizer", embed_bases)
    image_base = _embed(cfg.image.base, tmp / "bases" / "image", embed_bases)
    cfg = cfg.model_copy(
        update={
            "text": cfg.text.model_copy(update={"base": text_base, "tokenizer": tok}),
            "image": cfg.image.model_copy(update={"base": image_base}),
        }
    )
    cfg.save(tmp / "config.json")
    model.vocabulary.save(tmp)
    save_file(_trained_tensors(model), str(tmp / WEIGHTS))
    if cfg.text.train_mode == "lora":
        lora = model.text.lora_model
        assert lora is not None
        lora.save_pretrained(str(tmp / "text_lora"), save_embedding_layers=False)
    elif cfg.text.train_mode == "full":
        state = {
            k: v.detach().contiguous().cpu() for k, v in model.text.backbone.state_dict().items()
        }
        save_file(state, str(tmp / "text_model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(_required_files(cfg)):
        if name.endswith(".safetensors"):
            digest.update((tmp / name).read_bytes())
    checkpoint_id = f"{cfg.name}-{digest.hexdigest()[:12]}"
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "checkpoint_id": checkpoint_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vocabulary_hash": model.vocabulary.hash,
    }
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2))
    if model.query_table is not None:
        model.query_table.save(tmp)
    replace_directory(tmp, final)
    model.checkpoint_id = checkpoint_id
    return final


def read_checkpoint_meta(path: str | Path) -> tuple[dict, LexVLAConfig]:
    """Validate a checkpoint folder's files and return (checkpoint.json, config) without weights."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"no checkpoint directory at {root}")
    if not (root / "config.json").is_file():
        raise CheckpointError(
            f"{root} is not a LexVLA checkpoint: it has no config.json "
            "(a checkpoint is the folder written by LexVLA.save_pretrained or `lexvla train`)"
        )
    try:
        config = LexVLAConfig.load(root / "config.json")
    except Exception as exc:
        raise CheckpointError(
            f"{root / 'config.json'} is not a valid LexVLA config: {exc}"
        ) from exc
    missing = [f for f in _required_files(config) if not (root / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {root} is incomplete: missing {', '.join(missing)}. It was probably "
            "copied partially or its save was interrupted; use a complete checkpoint folder."
        )
    meta = json.loads((root / "checkpoint.json").read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root} has checkpoint format {meta.get('format')!r} v{meta.get('format_version')}; "
            f"this version reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    return meta, config


def _load_trained(model: LexVLA, path: Path) -> None:
    tensors = load_file(str(path))
    expected = _trained_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: saved {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit this model's configuration: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    adapter = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    model.image.adapter.load_state_dict(adapter)
    with torch.no_grad():
        model.image.codebook.copy_(tensors["visual_codebook"])
        model.logit_scale.copy_(tensors["logit_scale"][0])
    if not model.image.frozen:
        prefix = "image_backbone."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.image.backbone.load_state_dict(state)


def _absolute_bases(config: LexVLAConfig, root: Path) -> LexVLAConfig:
    """Bases named relative to the checkpoint folder become absolute paths in memory."""

    def fix(location: str | None) -> str | None:
        return None if location is None else resolve(location, root.resolve())

    text = config.text.model_copy(
        update={"base": fix(config.text.base), "tokenizer": fix(config.text.tokenizer)}
    )
    image = config.image.model_copy(update={"base": fix(config.image.base)})
    return config.model_copy(update={"text": text, "image": image})


def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trainable: bool = False,
    backbone_dtype: torch.dtype | None = None,
) -> LexVLA:
    from .lexvla import LexVLA
    from .query_table import FILE as QUERY_TABLE
    from .query_table import QueryTable

    root = Path(path)
    meta, config = read_checkpoint_meta(root)
    try:
        vocabulary = Vocabulary.load(root / "vocabulary.json")
    except (ValueError, VocabularyMismatchError) as exc:
        raise CheckpointError(str(exc)) from exc
    config = _absolute_bases(config, root)
    lora = str(root / "text_lora") if config.text.train_mode == "lora" else None
    model = LexVLA.from_config(
        config,
        root,
        expected_vocabulary=vocabulary,
        lora_path=lora,
        trainable=trainable,
        backbone_dtype=backbone_dtype,
    )
    _load_trained(model, root / WEIGHTS)
    if config.text.train_mode == "full":
        state = load_file(str(root / "text_model.safetensors"))
        model.text.backbone.load_state_dict(state)
    model.checkpoint_id = meta["checkpoint_id"]
    if (root / QUERY_TABLE).is_file():
        model.query_table = QueryTable.load(root / QUERY_TABLE, model)
    model.place(device=device, dtype=dtype)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint_meta",
    "resolve",
    "save_checkpoint",
]
