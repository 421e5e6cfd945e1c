"""Synthetic sparse vectors with LexVLA's statistics, for index benchmarks (no model needed).

Images: about ``active`` of ``vocab`` words each (LexVLA: ~1,081 of 17,234 at the 1/sqrt(V)
threshold), unit norm. Which words are active follows a Zipf law over word popularity, so common
words have posting lists covering most of the corpus, as real lexical vectors do. Two kinds:

- ``topics`` (default): each image also has 2 "topics" (of ``n_topics``, 30 words each) whose
  words carry most of its weight, the way an image's salient objects do; a query is a noisy
  description of one random image (its topic words weighted high, plus generic words). Real
  queries have images that match them well; this models that.
- ``random``: no structure; queries are Zipf-sampled words with random weights. The top-10 are
  then decided by noise, the worst case for any approximate search.

Everything is seeded and generated in row chunks, so 1M images need no more memory than their CSR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

VOCAB = 17_234
TOPIC_WORDS = 30


@dataclass
class Corpus:
    rows: sp.csr_matrix  # N x V float32, unit rows
    topics: np.ndarray  # N x 2 topic ids (kind "topics")
    topic_words: np.ndarray  # n_topics x TOPIC_WORDS
    popularity: np.ndarray  # V, probability of each word being active (background)


def _inclusion(vocab: int, active: int, rng: np.random.Generator) -> np.ndarray:
    """Per-word inclusion probability: Zipf over a random word order, summing to ``active``."""
    ranks = rng.permutation(vocab).astype(np.float64)
    p = 1.0 / (ranks + 8.0)
    lo, hi = 0.0, 1e7
    for _ in range(60):  # bisect the scale so that sum(min(0.97, c p)) == active
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(0.97, c * p).sum() < active else (lo, c)
    return np.minimum(0.97, lo * p)


def make_corpus(
    n: int,
    vocab: int = VOCAB,
    active: int = 1000,
    kind: str = "topics",
    n_topics: int = 2000,
    seed: int = 0,
    chunk: int = 4096,
) -> Corpus:
    rng = np.random.default_rng(seed)
    background = active - (2 * TOPIC_WORDS * 2 // 3 if kind == "topics" else 0)
    popularity = _inclusion(vocab, background, rng)
    topic_words = rng.choice(vocab, size=(n_topics, TOPIC_WORDS), replace=True)
    topics = rng.integers(0, n_topics, size=(n, 2))
    # fill preallocated arrays chunk by chunk: a 1M-image corpus is ~8 GB and must not be copied
    capacity = int(n * (active * 1.2 + 100))
    data = np.empty(capacity, dtype=np.float32)
    indices = np.empty(capacity, dtype=np.int32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    filled = 0
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        mask = rng.random((b, vocab), dtype=np.float32) < popularity.astype(np.float32)
        weights = np.zeros((b, vocab), dtype=np.float32)
        weights[mask] = rng.exponential(0.02, int(mask.sum()))
        if kind == "topics":
            for t in range(2):
                words = topic_words[topics[start : start + b, t]]  # b x TOPIC_WORDS
                keep = (rng.random(words.shape) < 0.67).ravel()
                boost = rng.lognormal(np.log(0.09), 0.5, words.shape).astype(np.float32)
                r = np.repeat(np.arange(b), TOPIC_WORDS)[keep]
                np.maximum.at(weights, (r, words.ravel()[keep]), boost.ravel()[keep])
        weights /= np.linalg.norm(weights, axis=1, keepdims=True) + 1e-12
        rr, cc = np.nonzero(weights)
        if filled + len(rr) > capacity:
            raise MemoryError("synthetic corpus exceeded its preallocated size")
        data[filled : filled + len(rr)] = weights[rr, cc]
        indices[filled : filled + len(rr)] = cc
        indptr[start + 1 : start + b + 1] = filled + np.cumsum(np.bincount(rr, minlength=b))
        filled += len(rr)
    if filled < 2**31:
        indptr = indptr.astype(np.int32)
    rows = sp.csr_matrix((data[:filled], indices[:filled], indptr), shape=(n, vocab), copy=False)
    return Corpus(rows, topics, topic_words, popularity)


def make_queries(
    corpus: Corpus, n: int, words: int, kind: str = "topics", seed: int = 1
) -> sp.csr_matrix:
    """``n`` queries with ``words`` active words each (unit norm)."""
    rng = np.random.default_rng(seed)
    vocab = corpus.rows.shape[1]
    p = corpus.popularity / corpus.popularity.sum()
    out = np.zeros((n, vocab), dtype=np.float32)
    for q in range(n):
        if kind == "topics":
            image = rng.integers(0, corpus.rows.shape[0])
            topical = corpus.topic_words[corpus.topics[image]].ravel()
            topical = rng.choice(topical, size=min(len(topical), words // 2 + 1), replace=False)
            out[q, topical] = rng.lognormal(np.log(0.15), 0.5, len(topical))
        n_generic = words - int((out[q] > 0).sum())
        if n_generic > 0:
            free = np.flatnonzero(out[q] == 0)
            pf = p[free] / p[free].sum()
            generic = rng.choice(free, size=n_generic, replace=False, p=pf)
            out[q, generic] = rng.exponential(0.03, n_generic) + 1e-3
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return sp.csr_matrix(out)


def cached_corpus(directory: str | Path, n: int, kind: str = "topics", seed: int = 0) -> Corpus:
    """:func:`make_corpus`, saved under ``directory`` once and memory-mapped on later calls.

    A 1M-image corpus takes minutes to generate and ~8 GB: benchmark processes share one copy
    through the page cache instead of each generating (and holding) its own.
    """
    folder = Path(directory) / f"corpus-{n}-{kind}-{seed}"
    done = folder / "done"
    if not done.is_file():
        corpus = make_corpus(n, kind=kind, seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("data", "indices", "indptr"):
            np.save(folder / f"rows_{part}.npy", getattr(corpus.rows, part))
        for name in ("topics", "topic_words", "popularity"):
            np.save(folder / f"{name}.npy", getattr(corpus, name))
        done.write_text("ok\n")
    parts = [
        np.load(folder / f"rows_{p}.npy", mmap_mode="r") for p in ("data", "indices", "indptr")
    ]
    rows = sp.csr_matrix(tuple(parts), shape=(n, VOCAB), copy=False)
    extra = [np.load(folder / f"{name}.npy") for name in ("topics", "topic_words", "popularity")]
    return Corpus(rows, *extra)
