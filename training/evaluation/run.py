"""``evaluate``: retrieval recall over a sparsity sweep, PatchDis and vocabulary usage.

Used by ``lexvla eval`` and by the training loop (``eval.*`` settings). The result is a JSON-safe
dict::

    {"retrieval": {"threshold": t, "dense": {...}, "threshold": {...}, "top-64": {...}},
     "patchdis": {"kind": {"miou": ..., "per_class": {...}}, "colour": {...}},
     "vocabulary": {"active_words_image": ..., "most_frequent_image_words": [...], ...},
     "skipped": {...}, "seconds": ...}
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset

from model import LexVLA
from training.config import EvalSettings
from training.evaluation.datasets import eval_dataset, mask_classes
from training.evaluation.encode import encode_images, encode_texts
from training.evaluation.patchdis import PatchDis
from training.evaluation.retrieval import retrieval_sweep, sparse_rows
from training.evaluation.vocabulary_usage import caption_word_matrix, vocabulary_usage
from training.step import autocast


def patchdis_scorers(
    model: LexVLA, dataset: Dataset, text_side: str, background: str
) -> dict[str, PatchDis]:
    """One scorer per mask kind of ``dataset``, with the class names' text vectors."""
    scorers = {}
    for name, classes in mask_classes(dataset).items():
        names = classes + (["background"] if background == "class" else [])
        vectors = encode_texts(model, names, text_side)
        scorers[name] = PatchDis(classes, vectors, background)
    return scorers


def _retrieval_and_usage(
    model: LexVLA, encoded: Any, settings: EvalSettings, text_side: str
) -> dict[str, Any]:
    texts = encode_texts(model, encoded.captions, text_side, settings.batch_size)
    sparsity = model.config.sparsity
    out: dict[str, Any] = {
        "retrieval": retrieval_sweep(
            encoded.images,
            texts,
            encoded.text_image,
            settings.top_k,
            sparsity.threshold,
            sparsity.top_k,
        )
    }
    words = caption_word_matrix(encoded.captions, model.text.tokenizer, model.vocabulary)
    out["vocabulary"] = vocabulary_usage(
        sparse_rows(encoded.images, sparsity.threshold, sparsity.top_k),
        sparse_rows(texts, sparsity.threshold, sparsity.top_k),
        words,
        encoded.text_image,
        model.vocabulary,
    )
    return out


def _dataset(spec: str, model: LexVLA, settings: EvalSettings) -> Dataset:
    return eval_dataset(
        spec,
        image_size=model.config.image.image_size,
        image_root=settings.image_root,
        split=settings.split,
        seed=settings.seed,
        max_images=settings.max_images,
    )


def _retrieval_set(
    model: LexVLA, settings: EvalSettings, text_side: str, num_workers: int
) -> dict[str, Any]:
    """Retrieval and vocabulary usage on ``settings.data``, plus PatchDis if it has masks and
    no separate PatchDis set is given."""
    assert settings.data is not None
    dataset = _dataset(settings.data, model, settings)
    scorers = {}
    if settings.patchdis is None:
        scorers = patchdis_scorers(model, dataset, text_side, settings.background)
    encoded = encode_images(
        model, dataset, batch_size=settings.batch_size, num_workers=num_workers, patchdis=scorers
    )
    result: dict[str, Any] = {"skipped": encoded.skipped}
    if encoded.captions:
        result |= _retrieval_and_usage(model, encoded, settings, text_side)
    if scorers:
        result["patchdis"] = {k: s.result() for k, s in scorers.items()}
    return result


def _patchdis_set(
    model: LexVLA, settings: EvalSettings, text_side: str, num_workers: int
) -> dict[str, Any]:
    assert settings.patchdis is not None
    dataset = _dataset(settings.patchdis, model, settings)
    scorers = patchdis_scorers(model, dataset, text_side, settings.background)
    if not scorers:
        raise ValueError(
            f"PatchDis set {settings.patchdis!r} has no masks (use shapes:N or coco:FILE)"
        )
    encode_images(
        model, dataset, batch_size=settings.batch_size, num_workers=num_workers, patchdis=scorers
    )
    return {k: s.result() for k, s in scorers.items()}


def evaluate(
    model: LexVLA, settings: EvalSettings, text_side: str = "llm", num_workers: int = 0
) -> dict[str, Any]:
    """Evaluate ``model`` on ``settings.data`` and/or ``settings.patchdis``."""
    if settings.data is None and settings.patchdis is None:
        raise ValueError("nothing to evaluate: give a retrieval set (--data) or a PatchDis set")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {"skipped": {}}
    try:
        with torch.inference_mode(), autocast(model.device, "auto"):
            if settings.data is not None:
                result |= _retrieval_set(model, settings, text_side, num_workers)
            if settings.patchdis is not None:
                result["patchdis"] = _patchdis_set(model, settings, text_side, num_workers)
    finally:
        model.train(was_training)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
