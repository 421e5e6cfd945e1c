"""Encoding an evaluation set: image vectors, caption vectors, and PatchDis updates, in one pass.

Images go through ``training.data.Collate(train=False)`` (resize and centre crop, the masks
cropped the same way); samples that cannot be read are skipped and counted, and their captions
are left out with them. Texts are encoded by the LLM, by ``model.bag_of_words`` for the BoW
ablation, or by the checkpoint's query table (``table``: its normalised sums of token rows, which
the sweep's threshold turns into exactly the table's query vectors).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model import LexVLA, bag_of_words
from model.lexical import l2norm_rows
from model.query_table import require_table
from training.data import Collate
from training.evaluation.patchdis import PatchDis


@dataclass
class EncodedSet:
    images: torch.Tensor  # (N, V) dense float32, CPU
    captions: list[str] = field(default_factory=list)  # all captions, image by image
    text_image: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: dict[str, int] = field(default_factory=dict)


def encode_texts(
    model: LexVLA, texts: Sequence[str], text_side: str = "llm", batch_size: int = 64
) -> torch.Tensor:
    """(M, V) dense float32 text vectors on the CPU."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        if text_side == "bow":
            out.append(bag_of_words(chunk, model.text.tokenizer, model.vocabulary))
        elif text_side == "table":
            summed = require_table(model).summed(chunk)
            out.append(torch.from_numpy(l2norm_rows(summed).toarray()))
        else:
            out.append(model.encode_texts(chunk).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(model.vocabulary))


def encode_images(
    model: LexVLA,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    patchdis: dict[str, PatchDis] | None = None,
) -> EncodedSet:
    """Image vectors and captions of ``dataset``; updates each ``patchdis`` scorer by mask name."""
    collate = Collate(model.config.image.image_size, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    vectors: list[torch.Tensor] = []
    captions: list[str] = []
    owners: list[int] = []
    skipped: Counter[str] = Counter()
    for batch in loader:
        skipped.update(batch["skipped"])
        if len(batch["keys"]) == 0:
            continue
        pixels = batch["pixel_values"].to(model.device)
        first = sum(v.shape[0] for v in vectors)
        vectors.append(model.encode_images(pixels).float().cpu())
        for i, caps in enumerate(batch.get("caption_sets", [])):
            captions += caps
            owners += [first + i] * len(caps)
        if patchdis:
            patches = model.patch_vectors(pixels)
            for name, scorer in patchdis.items():
                scorer.update(patches, batch["masks"][name])
    if not vectors:
        raise ValueError("no usable image in the evaluation set")
    return EncodedSet(
        torch.cat(vectors), captions, np.asarray(owners, dtype=np.int64), dict(skipped)
    )
