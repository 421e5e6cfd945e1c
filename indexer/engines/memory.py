"""Exact in-memory engine (scipy, float32): the reference every other engine is tested against.

Layout in memory. The *forward* index holds the image rows (CSR, images x words) for
:meth:`vectors_of` and for re-scoring. The *inverted* index is its transpose, words x images in
CSR (the same arrays as a CSC of images x words): row ``w`` is word ``w``'s posting list, so a
query with ``m`` words touches only ``m`` posting lists. Each posting list is stored in decreasing
weight (impact) order, which changes nothing for exact search and lets pruned search read only
the head of a list.

Exact search is one sparse (1 x V) @ (V x N) product; its cost is the summed length of the
query words' posting lists. With LexVLA's ~1,000 active words per image, common words cover most
of the corpus, and that sum grows linearly with N (bench/index_search.py: tens of ms at 1M).

Pruned search (:class:`Pruning`) bounds the work: keep the query's ``query_words`` heaviest
words, read the first ``posting_depth`` entries of each of their impact-sorted lists, take the
``candidates`` best partial scores, and re-score those candidates exactly with the full query on
the forward index. With ``posting_budget`` the depth is chosen per list instead: every list is
read down to one common contribution threshold (query weight x impact), set so that about that
many entries are read in all, which spends the work where the scores come from. Returned
scores are always exact dot products; only the membership of the top k is approximate,
measured as recall@10 against exact search in the benchmark. (A
MaxScore-style safe bound rarely prunes here: with hundreds of query words the sum of the
unread lists' upper bounds stays above the k-th score, so the approximation is the lever.)

Word filters (:mod:`indexer.filters`) mask rows before the top-k: an image has word ``w`` when
its weight in ``w``'s posting list reaches the image's strong-word cut (one float per image,
computed once per build, 4 bytes per image); rows in the delta are tested on their own rows.
Pruned search masks partial scores too, so candidates come from allowed images only.

Images added after the inverted index was built live in a small *delta* that is scored by brute
force; it is folded into the inverted index once it exceeds an eighth of the corpus (or on save).
Deleted rows are masked at query time and dropped when the index is saved.

Locking rule: ``_lock`` guards all of the index's state (ids, row map, live mask, forward,
inverted and delta arrays). Every method that writes (``add``, ``delete``, ``build``,
``compact``, ``save``) holds it for the whole change; every method that reads takes it too,
``search`` only long enough to take a consistent snapshot, so that scoring runs unlocked while a
writer builds the next arrays. Writers replace arrays rather than edit them in place when a
snapshot may still be in use (the live mask is copied before a delete changes it).

On disk (one version directory): ``index.json``, ``ids.json`` (row order), and
``{forward,inverted}_{data,indices,indptr}.npy``. :meth:`MemoryIndex.open` can memory-map them
(``mmap=True``) so that a large index costs page cache rather than private memory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines.base import (
    Hit,
    IndexManifest,
    as_query_row,
    check_rows,
    load_csr,
    save_csr,
    top_k,
)
from model.data.atomic import atomic_write_json

ENGINE = "memory"
_MIN_DELTA = 10_000  # rows scored by brute force before the inverted index is rebuilt


@dataclass(frozen=True)
class Pruning:
    """Approximate search settings; scores of the returned hits are still exact."""

    # Defaults from bench/index_search.py at 1M synthetic images (2 cores): p50 13-23 ms,
    # recall@10 1.0 on topical queries; 0.92-1.0 on structureless random ones (the worst case).
    # A corpus whose query lists hold fewer than ``posting_budget`` entries is searched exactly.
    query_words: int | None = None  # keep the query's heaviest words (None: all)
    posting_depth: int | None = None  # entries read per impact-sorted list (None: all)
    candidates: int = 2000  # best partial scores re-scored exactly
    # total entries read over all lists, spent where query weight x impact is highest (None: off)
    posting_budget: int | None = 1_000_000


class MemoryIndex:
    """Exact (or pruned) sparse dot-product search over float32 rows held in memory."""

    def __init__(self, manifest: IndexManifest, pruning: Pruning | None = None):
        self.manifest = manifest
        self.pruning = pruning
        v = manifest.vocabulary_size
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._live = np.zeros(0, dtype=bool)
        self._forward = sp.csr_matrix((0, v), dtype=np.float32)  # rows [0, n_base)
        self._inverted = sp.csr_matrix((v, 0), dtype=np.float32)
        self._delta_parts: list[sp.csr_matrix] = []  # rows [n_base, n), not inverted yet
        self._delta: sp.csr_matrix | None = None
        self._cuts: np.ndarray | None = None  # strong-word cut per forward row (lazy)
        # searches may run in threads (the service); writes and the lazy rebuild take this lock
        self._lock = threading.RLock()

    @classmethod
    def create(
        cls,
        vocabulary_size: int,
        vocabulary_hash: str = "",
        checkpoint_id: str = "",
        threshold: float | None = None,
        pruning: Pruning | None = None,
    ) -> MemoryIndex:
        manifest = IndexManifest(ENGINE, vocabulary_hash, vocabulary_size, checkpoint_id, threshold)
        return cls(manifest, pruning)

    # --- writing ------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], rows: sp.csr_matrix) -> None:
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        with self._lock:
            self._add(ids, rows)

    def _add(self, ids: list[str], rows: sp.csr_matrix) -> None:
        for i in ids:
            row = self._row_of.get(i)
            if row is not None and self._live[row]:
                raise ValueError(f"image {i!r} is already in the index")
        start = len(self._ids)
        self._ids.extend(ids)
        self._row_of.update({i: start + n for n, i in enumerate(ids)})
        self._live = np.concatenate([self._live, np.ones(len(ids), dtype=bool)])
        self._delta_parts.append(rows)
        self._delta = None

    def delete(self, ids: Iterable[str]) -> int:
        with self._lock:
            found = [self._row_of.get(str(i)) for i in ids]
            rows = sorted({r for r in found if r is not None and self._live[r]})
            if rows:
                live = self._live.copy()  # a search may hold the old mask in its snapshot
                live[rows] = False
                self._live = live
            return len(rows)

    # --- reading ------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.pruning is None

    @property
    def exact_rows(self) -> bool:
        return True

    @property
    def ranks_by_rows(self) -> bool:
        return self.exact  # pruned scores leave words out

    def count(self) -> int:
        with self._lock:
            return int(self._live.sum())

    def search(
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        pruning: Pruning | None = None,
    ) -> list[Hit]:
        """Top ``k`` after ``offset``; ``pruning`` overrides the index default (exact if None)."""
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        q = as_query_row(query, self.manifest.vocabulary_size)
        with self._lock:  # a consistent snapshot; scoring itself runs unlocked
            self._fold_delta_if_large()
            forward, inverted, delta, live = (
                self._forward, self._inverted, self._delta_matrix(), self._live
            )  # fmt: skip
            allowed = self._allowed(filters, forward, inverted, delta)
        settings = pruning if pruning is not None else self.pruning
        if settings is None:
            rows, scores = _exact(q, inverted)
        else:
            rows, scores = _pruned(q, settings, forward, inverted, allowed)
        d_rows, d_scores = _brute_force(q, delta)
        rows = np.concatenate([rows, d_rows + forward.shape[0]])
        scores = np.concatenate([scores, d_scores])
        keep = (scores > 0) & live[rows]
        if allowed is not None:
            keep &= allowed[rows]
        best_scores, best_rows = top_k(scores[keep], rows[keep], k, offset)
        return [(self._ids[r], float(s)) for r, s in zip(best_rows, best_scores, strict=True)]

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        pruning: Pruning | None = None,
    ) -> list[list[Hit]]:
        queries = sp.csr_matrix(queries, dtype=np.float32)
        return [
            self.search(queries[i], k, offset, filters, pruning) for i in range(queries.shape[0])
        ]

    def _allowed(
        self,
        filters: wf.WordFilter | None,
        forward: sp.csr_matrix,
        inverted: sp.csr_matrix,
        delta: sp.csr_matrix,
    ) -> np.ndarray | None:
        """Rows (forward then delta) that pass ``filters``; None when nothing is filtered."""
        if not wf.active(filters):
            return None
        assert filters is not None
        filters.check(self.manifest.vocabulary_size)
        if self._cuts is None:  # reset whenever the forward index is rebuilt
            self._cuts = wf.strong_cuts(forward)
        cuts, n_base = self._cuts, forward.shape[0]
        base = wf.allowed_by_lists(
            filters,
            n_base,
            lambda w: wf.posting_having(
                inverted.indices[inverted.indptr[w] : inverted.indptr[w + 1]],
                inverted.data[inverted.indptr[w] : inverted.indptr[w + 1]],
                cuts,
            ),
        )
        return np.concatenate([base, wf.allowed_rows(filters, delta)])

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        with self._lock:
            rows = []
            for i in ids:
                row = self._row_of.get(str(i))
                if row is None or not self._live[row]:
                    raise KeyError(f"image {i!r} is not in the index")
                rows.append(row)
            return self._all_rows()[np.array(rows, dtype=np.int64)]

    # --- building -----------------------------------------------------------------------------
    def _delta_matrix(self) -> sp.csr_matrix:
        if self._delta is None:
            if len(self._delta_parts) == 1:  # no copy: one bulk add of a large corpus is common
                self._delta = self._delta_parts[0]
            else:
                parts = [sp.csr_matrix((0, self.manifest.vocabulary_size), dtype=np.float32)]
                self._delta = sp.vstack(parts + self._delta_parts, format="csr", dtype=np.float32)
                # an empty delta must not count as pending rows: _all_rows would copy the
                # whole forward index on every call
                self._delta_parts = [self._delta] if self._delta.shape[0] else []
        return self._delta

    def _all_rows(self) -> sp.csr_matrix:
        if not self._delta_parts:
            return self._forward
        if self._forward.shape[0] == 0:
            return self._delta_matrix()
        return sp.vstack([self._forward, self._delta_matrix()], format="csr", dtype=np.float32)

    def _fold_delta_if_large(self) -> None:
        pending = sum(p.shape[0] for p in self._delta_parts)
        if pending > max(_MIN_DELTA, self._forward.shape[0] // 8):
            self.build()

    def compact(self) -> None:
        """Drop deleted rows (ids stay deletable and re-addable) and fold pending rows in."""
        with self._lock:
            self._compact()

    def _compact(self) -> None:
        if not self._live.all():
            live = np.flatnonzero(self._live)
            rows = self._all_rows()[live]
            self._ids = [self._ids[r] for r in live]
            self._row_of = {i: n for n, i in enumerate(self._ids)}
            self._live = np.ones(len(self._ids), dtype=bool)
            self._forward = sp.csr_matrix((0, self.manifest.vocabulary_size), dtype=np.float32)
            self._inverted = sp.csr_matrix((self.manifest.vocabulary_size, 0), dtype=np.float32)
            self._delta_parts, self._delta = [rows], None
        self._build()

    def build(self) -> None:
        """Fold pending rows into the forward and inverted indexes (done lazily otherwise)."""
        with self._lock:
            self._build()

    def _build(self) -> None:
        if self._delta_parts:
            self._forward = self._all_rows()
            self._delta_parts, self._delta = [], None
            self._inverted = impact_sorted_inverted(self._forward)
            self._cuts = None

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._save(path)

    def _save(self, path: Path) -> None:
        self._compact()
        save_csr(path, "forward", self._forward)
        save_csr(path, "inverted", self._inverted)
        atomic_write_json(path / "ids.json", self._ids)
        self.manifest.count, self.manifest.deleted = int(self._live.sum()), 0
        self.manifest.params = {"pruning": asdict(self.pruning) if self.pruning else None}
        self.manifest.save(path)

    @classmethod
    def open(cls, path: str | Path, mmap: bool = False) -> Self:
        path = Path(path)
        manifest = IndexManifest.load(path)
        if manifest.engine != ENGINE:
            raise ValueError(f"{path} holds a {manifest.engine!r} index, not a {ENGINE!r} one")
        saved = manifest.params.get("pruning")
        index = cls(manifest, Pruning(**saved) if saved else None)
        v, ids = manifest.vocabulary_size, json.loads((path / "ids.json").read_text())
        index._forward = load_csr(path, "forward", (len(ids), v), mmap)
        index._inverted = load_csr(path, "inverted", (v, len(ids)), mmap)
        index._ids, index._row_of = ids, {i: n for n, i in enumerate(ids)}
        index._live = np.ones(len(ids), dtype=bool)
        return index


# --- scoring ----------------------------------------------------------------------------------
def _exact(q: sp.csr_matrix, inverted: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """All rows sharing a word with the query, and their exact scores."""
    scores = sp.csr_matrix(q @ inverted)
    return scores.indices.astype(np.int64), scores.data


def _pruned(
    q: sp.csr_matrix,
    p: Pruning,
    forward: sp.csr_matrix,
    inverted: sp.csr_matrix,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the heads of the heaviest query words' lists, re-scored exactly."""
    n_base = forward.shape[0]
    if n_base == 0 or q.nnz == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.argsort(-q.data, kind="stable")[: p.query_words]
    starts = inverted.indptr[q.indices[order]]
    ends = inverted.indptr[q.indices[order] + 1]
    if p.posting_depth is not None:
        ends = np.minimum(ends, starts + p.posting_depth)
    if p.posting_budget is not None:
        ends = _budget_ends(inverted.data, starts, ends, q.data[order], p.posting_budget)
    spans = list(zip(starts, ends, q.data[order], strict=True))
    postings = np.concatenate([inverted.indices[a:b] for a, b, _ in spans])
    weights = np.concatenate([inverted.data[a:b] * w for a, b, w in spans])
    partial = np.bincount(postings, weights, minlength=n_base)
    if allowed is not None:  # candidates only among the images the filters allow
        partial[~allowed[:n_base]] = 0
    if n_base > p.candidates:
        cand = np.argpartition(partial, n_base - p.candidates)[n_base - p.candidates :]
    else:
        cand = np.arange(n_base)
    cand = np.sort(cand[partial[cand] > 0])
    dense_q = np.zeros(q.shape[1], dtype=np.float32)
    dense_q[q.indices] = q.data
    return cand.astype(np.int64), forward[cand] @ dense_q


def _budget_ends(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, budget: int
) -> np.ndarray:
    """Cut every list where its contribution (query weight x impact) falls below one threshold.

    The threshold is chosen so that about ``budget`` entries are read in all: heavy query words
    read deep, light ones shallow. Depths are found on a grid of quarter-octave steps per list
    (within ~19%), sampled from the impact-sorted lists, so no list is scanned to choose them.
    """
    lengths = ends - starts
    if lengths.sum() <= budget:
        return ends
    top = max(1, int(lengths.max()))
    steps = np.unique(np.round(2.0 ** np.arange(0, np.log2(top) + 0.25, 0.25)).astype(np.int64))
    depth = np.minimum(steps[None, :], lengths[:, None])  # m x steps, entries read
    sampled = data[starts[:, None] + np.maximum(depth - 1, 0)]  # impact at that depth
    contribution = np.where(lengths[:, None] > 0, sampled * weights[:, None], 0.0)
    lo, hi = 0.0, float(contribution.max())
    for _ in range(30):  # bisect the threshold: entries read fall as it rises
        mid = (lo + hi) / 2
        read = np.where(contribution >= mid, depth, 0).max(axis=1).sum()
        lo, hi = (mid, hi) if read > budget else (lo, mid)
    read_per_list = np.where(contribution >= hi, depth, 0).max(axis=1)
    return starts + read_per_list


def _brute_force(q: sp.csr_matrix, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the (few) rows not in the inverted index yet: positions and scores > 0."""
    if rows.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = np.asarray((rows @ q.T).todense()).ravel().astype(np.float32)
    hit = np.flatnonzero(scores)
    return hit.astype(np.int64), scores[hit]


def impact_sorted_inverted(forward: sp.csr_matrix) -> sp.csr_matrix:
    """Words x images CSR whose rows (posting lists) are in decreasing weight order."""
    inverted = sp.csr_matrix(forward.T, dtype=np.float32).tocsr()
    indptr, indices, data = inverted.indptr, inverted.indices, inverted.data
    for w in np.flatnonzero(np.diff(indptr) > 1):
        a, b = indptr[w], indptr[w + 1]
        order = np.argsort(-data[a:b], kind="stable")
        indices[a:b] = indices[a:b][order]
        data[a:b] = data[a:b][order]
    inverted.has_sorted_indices = False
    return inverted
