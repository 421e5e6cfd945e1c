"""The compact engine's state: a :class:`Snapshot` of its blocks, their scales and live masks.

The index (:mod:`indexer.engines.compact.index`) replaces its snapshot in one assignment on every
write; searches (:mod:`indexer.engines.compact.search`), the block files
(:mod:`indexer.engines.compact.files`) and the merge of small blocks
(:mod:`indexer.engines.compact.merge`) only read one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines.compact import block_kernels
from indexer.engines.compact.block import Block
from indexer.engines.compact.impact_kernels import CODES


@dataclass
class Snapshot:
    blocks: list[Block]
    scales: np.ndarray  # per block
    live: list[np.ndarray]  # per block, bool
    counts: np.ndarray  # V x 256 postings per (word, code), all blocks

    @property
    def values(self) -> np.ndarray:
        """Blocks x 256: the weight each code stands for in each block (cached)."""
        cached = self.__dict__.get("_values")
        if cached is None or len(cached) != len(self.scales):
            cached = (self.scales[:, None] * np.arange(CODES)[None, :]).astype(np.float32)
            self.__dict__["_values"] = cached
        return cached

    def top_scale(self) -> float:
        """The largest scale of a block with postings (0.0 when there is none)."""
        scales = zip(self.scales, self.blocks, strict=True)
        return max((float(s) for s, b in scales if len(b.fwd_codes)), default=0.0)

    @property
    def postings_per_row(self) -> float:
        """Mean forward-row length: what re-scoring one image reads."""
        rows = sum(b.rows for b in self.blocks)
        return sum(b.postings for b in self.blocks) / max(rows, 1)

    def id_of(self, doc: int) -> str:
        """The image id of document ``doc`` (block number << 16 | row)."""
        return bytes(self.blocks[doc >> 16].ids[doc & 0xFFFF]).decode("utf-8")

    def rows_of(self, docs: np.ndarray, vocabulary_size: int) -> sp.csr_matrix:
        """The dequantised forward rows of ``docs`` (block number << 16 | row), in that order:
        two compiled calls per block the docs lie in (lengths, then the rows in place)."""
        docs = np.asarray(docs, dtype=np.int64)
        lengths = np.zeros(len(docs), dtype=np.int64)
        present = sorted(set((docs >> 16).tolist()))
        for b in present:
            block_kernels.fill_row_lengths(docs, b, self.blocks[b].fwd_ptr, lengths)
        # int32 offsets where they fit, as scipy keeps them (int64 ones it scans and copies)
        small = int(lengths.sum()) < np.iinfo(np.int32).max
        indptr = np.zeros(len(docs) + 1, dtype=np.int32 if small else np.int64)
        np.cumsum(lengths, out=indptr[1:])
        words = np.empty(indptr[-1], dtype=np.int32)
        weights = np.empty(indptr[-1], dtype=np.float32)
        values = self.values
        for b in present:
            block = self.blocks[b]
            block_kernels.decode_block_rows(
                docs, b, block.fwd_gap_ptr, block.fwd_gaps, block.fwd_ptr, block.fwd_codes,
                values[b], indptr, words, weights,
            )  # fmt: skip
        return sp.csr_matrix((weights, words, indptr), shape=(len(docs), vocabulary_size))

    def filtered(
        self, filters: wf.WordFilter | None, allowed: list[np.ndarray] | None = None
    ) -> tuple[Snapshot, int]:
        """The snapshot with the live masks narrowed to the images ``filters`` and ``allowed``
        (a row mask per block) allow, and how many images that leaves."""
        live = list(self.live)
        if wf.active(filters):
            assert filters is not None
            filters.check(len(self.counts))  # counts has a row per vocabulary word
            live = [
                m & wf.allowed_by_lists(filters, block.rows, block.having)
                for block, m in zip(self.blocks, live, strict=True)
            ]
        if allowed is not None:
            live = [m & a for m, a in zip(live, allowed, strict=True)]
        return Snapshot(self.blocks, self.scales, live, self.counts), sum(
            int(m.sum()) for m in live
        )
