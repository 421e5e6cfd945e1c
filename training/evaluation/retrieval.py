"""Zero-shot retrieval recall (Flickr30k / MSCOCO style) and its dependence on sparsity.

Image -> text: an image counts as found at k when *any* of its captions is among the top k of
all texts; text -> image: a caption's own image among the top k of all images. Ties count
against the query (a candidate scoring the same as the right answer ranks before it), so an
all-zero sparse vector can never look like a hit.

Sparsity settings (the paper's recall-vs-sparsity curve): ``dense`` (no cut), ``threshold``
(the model's threshold, ``1/sqrt(V)`` by default, as indexing uses) and ``top-k`` for each k
(threshold, then each vector's k largest entries: what an index stores with
``sparsity.top_k = k``). Each reports the average active words per image and per text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp
import torch

from model.sparsify import default_threshold, sparsify

Matrix: TypeAlias = np.ndarray | sp.csr_matrix


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def ranks_text_to_image(
    images: Matrix, texts: Matrix, text_image: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """For each text, how many other images score at least as high as its own image."""
    out = np.empty(texts.shape[0], dtype=np.int64)
    for start in range(0, texts.shape[0], chunk):
        scores = _dense(texts[start : start + chunk] @ images.T)
        rows = np.arange(scores.shape[0])
        own = scores[rows, text_image[start : start + chunk]]
        out[start : start + chunk] = (scores >= own[:, None]).sum(axis=1) - 1
    return out


def ranks_image_to_text(
    images: Matrix, texts: Matrix, text_image: np.ndarray, chunk: int = 256
) -> np.ndarray:
    """For each image, how many texts of other images score at least as high as its best caption."""
    out = np.empty(images.shape[0], dtype=np.int64)
    for start in range(0, images.shape[0], chunk):
        scores = _dense(images[start : start + chunk] @ texts.T)
        ids = np.arange(start, start + scores.shape[0])
        own = text_image[None, :] == ids[:, None]
        if not own.any(axis=1).all():
            raise ValueError("every image needs at least one caption")
        best = np.where(own, scores, -np.inf).max(axis=1)
        out[start : start + chunk] = ((scores >= best[:, None]) & ~own).sum(axis=1)
    return out


def recalls(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    return {f"R@{k}": float((ranks < k).mean() * 100.0) for k in ks}


def retrieval_scores(
    images: Matrix, texts: Matrix, text_image: np.ndarray
) -> dict[str, dict[str, float]]:
    """R@1/5/10 (percent) in both directions."""
    return {
        "image_to_text": recalls(ranks_image_to_text(images, texts, text_image)),
        "text_to_image": recalls(ranks_text_to_image(images, texts, text_image)),
    }


def sparse_rows(
    dense: torch.Tensor, threshold: float | None, top_k: int | None, chunk: int = 4096
) -> sp.csr_matrix:
    """``model.sparsify`` over row chunks (bounded memory)."""
    parts = [
        sparsify(dense[i : i + chunk], threshold, top_k) for i in range(0, dense.shape[0], chunk)
    ]
    return sp.vstack(parts, format="csr")


def sparsity_settings(
    top_ks: Sequence[int], threshold: float | None, top_k: int | None
) -> list[tuple[str, float | None, int | None]]:
    """(name, threshold, top_k) of every setting: dense, the model's own, then each top-k."""
    settings: list[tuple[str, float | None, int | None]] = [("dense", 0.0, None)]
    settings.append(("threshold" if top_k is None else f"threshold+top-{top_k}", threshold, top_k))
    settings += [(f"top-{k}", threshold, k) for k in sorted(set(top_ks), reverse=True)]
    return settings


def retrieval_sweep(
    images: torch.Tensor,
    texts: torch.Tensor,
    text_image: np.ndarray,
    top_ks: Sequence[int] = (),
    threshold: float | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Recall and active words at every sparsity setting, from dense (N, V) and (M, V) vectors."""
    vocab = images.shape[1]
    limit = default_threshold(vocab) if threshold is None else threshold
    out: dict[str, Any] = {
        "threshold_value": limit,
        "images": images.shape[0],
        "texts": texts.shape[0],
    }
    for name, thr, k in sparsity_settings(top_ks, threshold, top_k):
        if k is not None and k >= vocab:
            continue
        if name == "dense":
            img: Matrix = images.float().numpy()
            txt: Matrix = texts.float().numpy()
            active_img = active_txt = float(vocab)
        else:
            img, txt = sparse_rows(images, thr, k), sparse_rows(texts, thr, k)
            active_img = float(np.diff(img.indptr).mean())
            active_txt = float(np.diff(txt.indptr).mean())
        out[name] = {
            **retrieval_scores(img, txt, text_image),
            "active_words_image": active_img,
            "active_words_text": active_txt,
        }
    return out
