"""Compact impact index: quantised, impact-ordered, memory-mapped, searched on every core.

The memory engine keeps float32 forward and inverted copies, ~16 GB per million LexVLA images
(~1,000 active words each). This engine holds the same corpus in about 4 bytes per posting (~4 GB
per million, :mod:`indexer.engines.compact.block` has the byte layout) and scores it with
compiled kernels that release the GIL (:mod:`indexer.engines.compact.impact_kernels`), so one
process searches on every core and several processes share one copy of the mapped files in the
page cache.

**Quantisation.** Each block stores a weight ``w`` as the code ``round(w / scale)`` (uint8),
``scale`` = the block's largest weight / 255 (so nothing is ever clipped; a partial or merged
block may take a larger one, :mod:`indexer.engines.compact.merge`); code 0 is not stored. Each
block records a bound on ``|w - code * scale|`` (``scale / 2`` when quantised from float rows),
and a quantised score is within the largest bound times ``sum(q_j over matched words j)`` of the
float32 dot product (the tests check this bound). Scores are therefore close, not exact:
``exact`` is False, and the service re-scores the hits it returns from the corpus store's float
rows, or, with ``LEXVLA_EXACT_SCORES=false``, reports these quantised scores (``ranks_by_rows``:
they are the complete dot products of the rows :meth:`CompactIndex.vectors_of` returns).

**Search** (:mod:`indexer.engines.compact.search` has the details): score-at-a-time over
impact-ordered lists, exact in quantised scores, or pruned (:class:`ImpactPruning`) to a share
of the query's postings whose best partial scores are then re-scored completely.

**Threads.** A search splits its blocks over ``threads`` threads (one accumulator per block,
256 KiB, kept in L2). Searches, adds and deletes may run concurrently: readers take a snapshot of
the block list and live masks under ``_lock`` and score without it; writers build new arrays and
swap them in under the lock (copy-on-write), so a search never sees half a change. On disk: one
version directory (:mod:`indexer.engines.compact.files` has its layout).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Self, cast

import numpy as np
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines.base import Hit, IndexManifest, SearchIndex, as_query_row, check_rows
from indexer.engines.compact import impact_kernels as kernels
from indexer.engines.compact.block import (
    MAX_ROWS,
    Block,
    balanced_block_rows,
    encode_ids,
    quantised_block,
)
from indexer.engines.compact.files import Spill, read_version, write_version
from indexer.engines.compact.merge import merge_small, optimised
from indexer.engines.compact.pruning import DEFAULT_PRUNING, ImpactPruning
from indexer.engines.compact.search import Scorer, where_masks
from indexer.engines.compact.snapshot import Snapshot
from indexer.fields import Where, WhereError

ENGINE = "compact"
CODES = kernels.CODES
_NO_PRUNING = object()


class CompactIndex(SearchIndex):
    """Quantised impact index (uint8 impacts, 16-bit ids in blocks), pruned or exact search."""

    exact = False  # scores are quantised (within the documented bound) ...
    exact_rows = False  # ... and so are the rows: the service re-scores from the corpus store
    ranks_by_rows = True  # top-k are complete dot products of the quantised rows
    filters_metadata = True  # ``where``: the version's metadata columns mask each block's rows

    def __init__(
        self,
        manifest: IndexManifest,
        pruning: ImpactPruning | None = DEFAULT_PRUNING,
        block_rows: int = MAX_ROWS,
        threads: int | None = None,
        spill_dir: str | Path | None = None,
    ):
        if not 1 <= block_rows <= MAX_ROWS:
            raise ValueError(f"block_rows must be in 1..{MAX_ROWS}, got {block_rows}")
        self.manifest = manifest
        self.pruning = pruning
        self.block_rows = block_rows
        self.threads = max(1, threads or os.cpu_count() or 1)
        # a build's sealed blocks are written there and mapped back (files.Spill)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._spill = Spill(self.spill_dir) if self.spill_dir is not None else None
        v = manifest.vocabulary_size
        self._snap = Snapshot([], np.zeros(0, np.float64), [], np.zeros((v, CODES), np.int64))
        self._sources: list[Path | None] = []  # the directory a block was loaded from, if any
        self._saved: Path | None = None  # where save() wrote last (publish renames it: moved)
        self._errors: list[float] = []  # per block: largest |weight - dequantised weight|
        self._pending_ids: list[str] = []
        self._pending_rows: list[sp.csr_matrix] = []
        self._lock = threading.RLock()
        self._scorer = Scorer(self.threads)
        # per thread: where the ids of its last page of hits live, so that the rows a caller
        # asks for next (the page's explanations) skip the id lookup in every block
        self._recent = threading.local()

    @classmethod
    def create(
        cls,
        vocabulary_size: int,
        vocabulary_hash: str = "",
        checkpoint_id: str = "",
        threshold: float | None = None,
        pruning: ImpactPruning | None = DEFAULT_PRUNING,
        expected_rows: int | None = None,
        threads: int | None = None,
        spill_dir: str | Path | None = None,
    ) -> CompactIndex:
        """A new empty index; ``expected_rows`` sizes the blocks evenly (else 65,536 rows), and
        ``spill_dir`` (a folder on the index's file system) bounds a build's memory to a block."""
        manifest = IndexManifest(ENGINE, vocabulary_hash, vocabulary_size, checkpoint_id, threshold)
        return cls(manifest, pruning, balanced_block_rows(expected_rows), threads, spill_dir)

    # --- writing ------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], rows: sp.csr_matrix) -> None:
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        with self._lock:
            pending = set(self._pending_ids)
            clash = next((i for i in ids if i in pending), None)
            if clash is None:
                clash = self._first_live(encode_ids(ids), ids)
            if clash is not None:
                raise ValueError(f"image {clash!r} is already in the index")
            self._pending_ids.extend(ids)
            self._pending_rows.append(rows)
            if len(self._pending_ids) >= self.block_rows:
                self._seal(full_only=True)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete ``ids`` (unknown ones ignored); how many images were deleted."""
        keys = encode_ids(list(dict.fromkeys(str(i) for i in ids)))  # an id named twice: once
        with self._lock:
            self._seal()
            snap = self._snap
            live = list(snap.live)
            changed = 0
            for b, block in enumerate(snap.blocks):
                rows = block.find(keys)
                rows = rows[rows >= 0]
                if len(rows) and live[b][rows].any():
                    mask = live[b].copy()
                    changed += int(mask[rows].sum())
                    mask[rows] = False
                    live[b] = mask
            self._snap = Snapshot(snap.blocks, snap.scales, live, snap.counts)
            return changed

    def build(self) -> None:
        """Seal pending rows into blocks (done lazily by the first read otherwise)."""
        with self._lock:
            self._seal()

    # --- reading ------------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return len(self._pending_ids) + sum(int(m.sum()) for m in self._snap.live)

    def search(
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        pruning: ImpactPruning | object | None = _NO_PRUNING,
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        """Top ``k`` after ``offset`` by quantised score among the images ``filters`` and
        ``where`` allow; ``pruning`` overrides the index's."""
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        q = as_query_row(query, self.manifest.vocabulary_size)
        fields = self.where_fields(where)
        snap = self._snapshot()
        keep = q.data > 0
        words, weights = q.indices[keep].astype(np.int32), q.data[keep].astype(np.float32)
        if not snap.blocks or len(words) == 0:
            return []
        settings = cast(ImpactPruning | None, self.pruning if pruning is _NO_PRUNING else pruning)
        allowed = where_masks(snap, fields, where)
        hits, docs = self._scorer.search(
            snap, words, weights, k + offset, offset, filters, settings, allowed
        )
        self._recent.page = (
            snap.blocks,
            dict(zip((h[0] for h in hits), docs.tolist(), strict=True)),
        )
        return hits

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        queries = sp.csr_matrix(queries, dtype=np.float32)
        return [
            self.search(queries[i], k, offset, filters, where=where)
            for i in range(queries.shape[0])
        ]

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        """Dequantised rows of live ids, in the given order (KeyError for an unknown id)."""
        snap = self._snapshot()
        where = self._recent_docs(snap, ids)
        if where is None:
            keys = encode_ids([str(i) for i in ids])
            where = np.full(len(ids), -1, dtype=np.int64)
            for b, block in enumerate(snap.blocks):
                rows = block.find(keys)
                hit = (rows >= 0) & (where < 0)
                hit[hit] = snap.live[b][rows[hit]]
                where[hit] = (b << 16) | rows[hit]
        if (where < 0).any():
            missing = ids[int(np.flatnonzero(where < 0)[0])]
            raise KeyError(f"image {missing!r} is not in the index")
        return snap.rows_of(where, self.manifest.vocabulary_size)

    def matching(
        self,
        query: sp.csr_matrix,
        filters: wf.WordFilter | None = None,
        where: Where | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every image sharing a word with ``query`` that ``filters`` and ``where`` allow, as
        (row in :attr:`fields`, quantised score) arrays (:meth:`Scorer.matching`)."""
        fields = self.where_fields(where) or self.fields
        if fields is None:
            raise WhereError("where", "this index version has no metadata columns")
        q = as_query_row(query, self.manifest.vocabulary_size)
        keep = q.data > 0
        words, weights = q.indices[keep].astype(np.int32), q.data[keep].astype(np.float32)
        snap = self._snapshot()
        if not snap.blocks or len(words) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        allowed = where_masks(snap, fields, where)
        return self._scorer.matching(snap, words, weights, filters, allowed, fields)

    def score_error(self, query: sp.csr_matrix) -> float:
        return self.error_bound(query)

    def error_bound(self, query: sp.csr_matrix) -> float:
        """Largest |quantised - float32| score of any image for ``query`` (the scale bound)."""
        q = as_query_row(query, self.manifest.vocabulary_size)
        snap = self._snapshot()
        worst = max(self._errors, default=0.0)
        return float(worst * np.abs(q.data).sum()) * (1 + 1e-5) + 1e-7 if snap.blocks else 0.0

    # --- internals ----------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        with self._lock:
            if self._pending_ids:
                self._seal()
            return self._snap

    def _recent_docs(self, snap: Snapshot, ids: Sequence[str]) -> np.ndarray | None:
        """Docs of ``ids`` when all are on this thread's last page and still live, else None."""
        page: tuple[list[Block] | None, dict[str, int]] = getattr(self._recent, "page", (None, {}))
        blocks, docs = page
        if blocks is not snap.blocks or not ids:
            return None
        try:
            where = np.array([docs[str(i)] for i in ids], dtype=np.int64)
        except KeyError:
            return None
        live = all(snap.live[int(d) >> 16][int(d) & 0xFFFF] for d in where)
        return where if live else None

    def _first_live(self, keys: np.ndarray, ids: list[str]) -> str | None:
        for b, block in enumerate(self._snap.blocks):
            rows = block.find(keys)
            hit = np.flatnonzero(rows >= 0)
            alive = hit[self._snap.live[b][rows[hit]]]
            if len(alive):
                return ids[int(alive[0])]
        return None

    def _seal(self, full_only: bool = False) -> None:
        """Quantise pending rows into new blocks of ``block_rows`` (the rest too, unless
        ``full_only``). A partial block takes at least the largest scale of the blocks with
        postings, so that the small blocks of single adds share a scale and merge exactly
        (:mod:`indexer.engines.compact.merge`). Caller holds the lock."""
        if not self._pending_ids:
            return
        rows = sp.vstack(self._pending_rows, format="csr", dtype=np.float32)
        rows.sort_indices()
        ids, v = self._pending_ids, self.manifest.vocabulary_size
        n_full = len(ids) - len(ids) % self.block_rows
        end = n_full if full_only else len(ids)
        new = []
        for start in range(0, end, self.block_rows):
            stop = min(end, start + self.block_rows)
            floor = self._snap.top_scale() if stop - start < self.block_rows else 0.0
            new.append(quantised_block(ids[start:stop], rows[start:stop], v, min_scale=floor))
        self._pending_ids = ids[end:]
        self._pending_rows = [rows[end:]] if end < len(ids) else []
        sources: list[Path | None] = [None] * len(new)
        if self._spill is not None:
            for n, (block, scale, error) in enumerate(new):
                spilled, sources[n] = self._spill.put(block)
                new[n] = (spilled, scale, error)
        self._append_blocks(new, sources)

    def _append_blocks(
        self, new: list[tuple[Block, float, float]], sources: Sequence[Path | None] | None = None
    ) -> None:
        snap = self._snap
        counts = snap.counts.copy() if snap.blocks else np.zeros_like(snap.counts)  # in use
        for block, _, _ in new:
            block.add_counts(counts, 1)
        self._snap = Snapshot(
            snap.blocks + [b for b, _, _ in new],
            np.concatenate([snap.scales, [s for _, s, _ in new]]),
            snap.live + [np.ones(b.rows, dtype=bool) for b, _, _ in new],
            counts,
        )
        self._errors += [e for _, _, e in new]
        self._sources += list(sources) if sources else [None] * len(new)

    def merge_small_blocks(self) -> int:
        """Merge blocks by the tiered policy of :mod:`indexer.engines.compact.merge` (full tiers
        of small blocks into one, blocks with many deleted rows rewritten without them);
        returns how many blocks fewer the index has. :meth:`save` calls it."""
        with self._lock:
            self._seal()
            merged = merge_small(self._snap, self._errors, self._sources, self.block_rows)
            if merged is None:
                return 0
            before = len(self._snap.blocks)
            self._snap, self._errors, self._sources = merged
            return before - len(self._snap.blocks)

    def optimize(self) -> bool:
        """Rewrite the blocks into a batch build's shape (:func:`~indexer.engines.compact.merge.
        optimised`): deleted rows and the small blocks of live writes are gone."""
        with self._lock:
            self._seal()
            done = optimised(self._snap, self._errors, self._sources)
            if done is not None:
                self._snap, self._errors, self._sources = done
            return done is not None

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Merge blocks (:meth:`merge_small_blocks`), then write every block (hard links for
        blocks loaded from disk), live masks and the manifest."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.merge_small_blocks()
            snap, sources = self._snap, list(self._sources)
        params = {
            "pruning": asdict(self.pruning) if self.pruning else None,
            "block_rows": self.block_rows,
            "rule": wf.RULE,  # the word filters' rule the blocks' strong words were taken with
        }
        folders = write_version(path, self.manifest, snap, sources, self._errors, params)
        with self._lock:  # the blocks are on disk now: a later save links them
            for b, folder in enumerate(folders):
                if b < len(self._snap.blocks) and self._snap.blocks[b] is snap.blocks[b]:
                    self._sources[b] = folder
            self._saved = path

    def moved(self, path: Path) -> None:
        """The version saved last was renamed to ``path``: its blocks are linked from there."""
        with self._lock:
            old, self._saved = self._saved, Path(path)
            if old is not None:
                self._sources = [
                    self._saved / s.relative_to(old) if s and s.is_relative_to(old) else s
                    for s in self._sources
                ]

    @classmethod
    def open(
        cls, path: str | Path, mmap: bool = True, threads: int | None = None, populate: bool = True
    ) -> Self:
        """Open a saved index; memory-mapped by default, every page mapped at once unless
        ``populate`` is False (a 1M-image index takes about a second)."""
        path = Path(path)
        manifest, new, sources, masks = read_version(path, ENGINE, mmap, populate)
        saved = manifest.params.get("pruning")
        index = cls(
            manifest, ImpactPruning.saved(saved, f"the compact index at {path}") if saved else None,
            manifest.params.get("block_rows", MAX_ROWS), threads,
        )  # fmt: skip
        index._append_blocks(new, sources)
        for b, mask in masks.items():
            index._snap.live[b] = mask
        return index
