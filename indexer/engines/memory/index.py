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
The scoring functions and :class:`Pruning` are in :mod:`indexer.engines.memory.search`.

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
from dataclasses import asdict
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_write_json
from indexer import filters as wf
from indexer.engines.base import (
    Hit,
    IndexManifest,
    SearchIndex,
    as_query_row,
    check_rows,
    load_csr,
    save_csr,
    top_k,
)
from indexer.engines.memory.search import (
    Pruning,
    brute_force_scores,
    exact_scores,
    impact_sorted_inverted,
    pruned_scores,
)
from indexer.fields import Where
from indexer.fields.columns import encode_ids

ENGINE = "memory"
_MIN_DELTA = 10_000  # rows scored by brute force before the inverted index is rebuilt


class MemoryIndex(SearchIndex):
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
        self._id_keys: np.ndarray | None = None  # the ids as a bytes array (metadata lookups)
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
    def filters_metadata(self) -> bool:
        return True

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
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        """Top ``k`` after ``offset``; ``pruning`` overrides the index default (exact if None)."""
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        q = as_query_row(query, self.manifest.vocabulary_size)
        fields = self.where_fields(where)
        with self._lock:  # a consistent snapshot; scoring itself runs unlocked
            self._fold_delta_if_large()
            forward, inverted, delta, live = (
                self._forward, self._inverted, self._delta_matrix(), self._live
            )  # fmt: skip
            allowed = self._allowed(filters, forward, inverted, delta)
            if fields is not None:
                assert where is not None
                if self._id_keys is None or len(self._id_keys) != len(self._ids):
                    self._id_keys = encode_ids(self._ids)
                by_where = fields.allowed(where, self._id_keys)
                allowed = by_where if allowed is None else allowed & by_where
        settings = pruning if pruning is not None else self.pruning
        if settings is None:
            rows, scores = exact_scores(q, inverted)
        else:
            rows, scores = pruned_scores(q, settings, forward, inverted, allowed)
        d_rows, d_scores = brute_force_scores(q, delta)
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
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        queries = sp.csr_matrix(queries, dtype=np.float32)
        return [
            self.search(queries[i], k, offset, filters, pruning, where=where)
            for i in range(queries.shape[0])
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
            self._id_keys = None
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
