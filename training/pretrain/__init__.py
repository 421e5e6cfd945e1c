"""Pretraining the tiny preset's random backbones before LexVLA training (``pretrain.*`` settings).

The paper trains LexVLA on top of backbones that were pretrained elsewhere: a frozen DINOv2 and
a Llama 2 whose ``lm_head`` is the frozen text codebook. The tiny preset builds both at random
(no weights can be downloaded), so a run that asks for it first makes its own, the way those
were made, on the synthetic shapes it trains on: ``training.pretrain.image`` (dense shape
labelling of DINOv2's patches) and ``training.pretrain.text`` (language modelling plus lexical
prediction for Llama). LexVLA training then freezes the image backbone and the text codebook as
the paper does.

Cache: each pretrained backbone is a Hugging Face folder ``<cache>/<image|text>-<key>/`` (the
text one with its tokenizer) plus ``pretraining.json`` (settings, timing, held-out check). The
key hashes the settings, the image size or prompt, and every file of the random base it starts
from, so a second run with the same inputs reuses the folder and anything else gets its own.
A folder is written under a temporary name and renamed when complete: a killed pretraining
leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model import LexVLAConfig, Vocabulary
from model.backbones import load_dinov2, load_llama, load_tokenizer
from training.config import PretrainSettings

logger = logging.getLogger(__name__)
REPORT = "pretraining.json"
CODE_VERSION = 2  # bump when an objective or its data changes, so old cache entries are not reused


def folder_digest(path: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def cache_key(base: Path, inputs: dict[str, Any]) -> str:
    payload = json.dumps({"version": CODE_VERSION, **inputs}, sort_keys=True)
    return hashlib.sha256((payload + folder_digest(base)).encode()).hexdigest()[:16]


def cached_pretraining(
    folder: Path, build: Callable[[Path], dict[str, Any]], inputs: dict[str, Any]
) -> dict[str, Any]:
    """The report of ``folder`` if complete, else ``build(tmp)`` into a temporary sibling that is
    renamed into place; ``reused`` says which."""
    report_file = folder / REPORT
    if report_file.is_file():
        return json.loads(report_file.read_text()) | {"reused": True, "path": str(folder)}
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    metrics = build(tmp)
    report = {
        "inputs": inputs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metrics,
    }
    (tmp / REPORT).write_text(json.dumps(report, indent=2))
    if folder.exists():  # a concurrent run finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return report | {"reused": False, "path": str(folder)}


def _pretrain_image(
    config: LexVLAConfig, settings: PretrainSettings, cache: Path, seed: int, progress: bool
) -> tuple[str, dict[str, Any]]:
    from training.pretrain.image import pretrain_image_backbone

    assert config.image.base is not None
    base = Path(config.image.base)
    inputs = {
        "settings": settings.image.model_dump(),
        "image_size": config.image.image_size,
        "seed": seed,
    }
    folder = cache / f"image-{cache_key(base, inputs)}"

    def build(out: Path) -> dict[str, Any]:
        vit: Any = load_dinov2(config.image)  # a Dinov2Model (save_pretrained)
        metrics = pretrain_image_backbone(
            vit,
            settings.image,
            config.image.image_size,
            seed=seed,
            num_workers=settings.num_workers,
            progress=progress,
        )
        vit.save_pretrained(str(out))
        return metrics

    return str(folder), cached_pretraining(folder, build, inputs)


def _pretrain_text(
    config: LexVLAConfig, settings: PretrainSettings, cache: Path, seed: int, progress: bool
) -> tuple[str, dict[str, Any]]:
    from training.pretrain.text import pretrain_text_backbone

    assert config.text.base is not None
    base = Path(config.text.base)
    inputs = {"settings": settings.text.model_dump(), "prompt": config.text.prompt, "seed": seed}
    folder = cache / f"text-{cache_key(base, inputs)}"

    def build(out: Path) -> dict[str, Any]:
        tokenizer = load_tokenizer(config.text)
        vocabulary = Vocabulary.from_tokenizer(tokenizer, config.vocabulary_rule)
        llm = load_llama(config.text)
        metrics = pretrain_text_backbone(
            llm, tokenizer, vocabulary, config.text, settings.text, seed=seed, progress=progress
        )
        shutil.copytree(base, out)  # the tokenizer files; the weights are replaced next
        llm.save_pretrained(str(out))
        return metrics

    return str(folder), cached_pretraining(folder, build, inputs)


def pretrain_backbones(
    config: LexVLAConfig,
    settings: PretrainSettings,
    cache: Path,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[LexVLAConfig, dict[str, dict[str, Any]]]:
    """Pretrain (or reuse) the backbones ``settings`` asks for; returns the config that names
    them as its bases, and one report per pretrained backbone (``image``, ``text``)."""
    if config.text.base is None or config.image.base is None:
        raise ValueError("pretraining starts from backbones saved on disk (materialize_tiny)")
    reports: dict[str, dict[str, Any]] = {}
    text, image = config.text, config.image
    if settings.image.steps > 0:
        path, reports["image"] = _pretrain_image(config, settings, cache, seed, progress)
        image = image.model_copy(update={"base": path})
    if settings.text.steps > 0:
        path, reports["text"] = _pretrain_text(config, settings, cache, seed, progress)
        text = text.model_copy(update={"base": path, "tokenizer": None})
    return config.model_copy(update={"text": text, "image": image}), reports


__all__ = ["REPORT", "cache_key", "cached_pretraining", "folder_digest", "pretrain_backbones"]
