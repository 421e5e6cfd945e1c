"""One block of the compact impact index: up to 65,536 images, immutable once built.

A block is what a search thread scores in one kernel call: its image ids are 16 bits, and its
float32 accumulator (256 KiB at full size) stays in the core's L2 cache. Files of a block
directory (``.npy``, memory-mapped when the index is opened with ``mmap``):

==============  =====================  ===========================================================
``post``        uint8 [~1.7 x post.]   the inverted lists: for each word, its segments of one
                                       impact code, codes descending, local image ids ascending
                                       within a segment; each segment stored as byte gaps or as
                                       16-bit ids, whichever is smaller (below)
``seg_code``    uint8 [segments]       the impact code (1-255) of each segment
``seg_end``     uint32 [segments]      end offset of each segment in ``post`` (bytes); bit 31
                                       set: the segment is byte gaps, bit 30: none escapes
``seg_count``   uint16 [segments]      postings of each segment, minus one
``word_seg``    uint32 [V + 1]         word ``w``'s segments are ``word_seg[w]:word_seg[w + 1]``
``fwd_gaps``    uint8 [~postings]      forward rows, word ids as gaps from the previous id
                                       (a gap >= 255 is 255 then two little-endian bytes)
``fwd_gap_ptr`` uint32 [rows + 1]      where each row starts in ``fwd_gaps``
``fwd_codes``   uint8 [postings]       forward rows, impact codes in word order
``fwd_ptr``     uint32 [rows + 1]      where each row starts in ``fwd_codes``
``ids``         bytes [rows]           image ids (UTF-8), in row order
``ids_sorted``  bytes [rows]           the same ids sorted, and ``ids_rows`` int32 [rows] their
                                       rows: lookups are binary searches that touch a few pages
``strong_ptr``  uint32 [V + 1]         word filters: the rows that *have* word ``w``
``strong_rows`` uint16 [~10 x rows]    (:mod:`indexer.filters`) are ``strong_rows[strong_ptr[w]:
                                       strong_ptr[w + 1]]``, taken from the float rows at build
==============  =====================  ===========================================================

Segment encodings (:func:`indexer.engines.compact.block_kernels.pack_segments`). A segment's ids are
a random-looking subset of the block's rows, so a segment of ``n`` ids has gaps of about
``65,536 / n``. The long, low-impact segments of common words have small gaps; a byte per gap
stores them, with an escape (0, then the id in two bytes) for a rare gap over 255. The other
segments keep 16-bit ids, at an even offset so that the scorer reads them as ``uint16``. On the
1M-image benchmark corpora (bench/index_search.py), 30% of the postings of the structureless
"random" one are in byte-gap segments: its inverted lists take 1.70 bytes per posting instead of
2, and the index 3.82 GB instead of 4.06. Segments without an escape are flagged and scored by
a loop without the escape branch. With the planner of the same change, pruned search ran as fast
as on 16-bit ids and exact search, which reads every segment, 0-13% slower (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines.compact import block_kernels as kernels
from indexer.engines.compact import impact_kernels

MAX_ROWS = 1 << 16  # local ids are uint16
_MADV_POPULATE_READ = 22  # linux/mman.h; not exported by Python's mmap module


def balanced_block_rows(expected_rows: int | None, parallel: int = 2) -> int:
    """Rows per block so that ``expected_rows`` fill blocks evenly, in a multiple of ``parallel``
    blocks once there is more than one: 100k images make 2 blocks of 50k, not 65,536 + 34,464."""
    if not expected_rows or expected_rows <= MAX_ROWS // 2:
        return MAX_ROWS
    blocks = -(-expected_rows // MAX_ROWS)
    blocks = -(-blocks // parallel) * parallel
    return -(-expected_rows // blocks)


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Image ids as a numpy bytes array (UTF-8), the form blocks store and look up."""
    return np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_)


LAYOUT = 2  # 1: post as uint16 ids (before byte-gap segments); refused with a rebuild message
MAX_BYTES = 1 << 30  # seg_end's offsets are 30 bits


@dataclass(frozen=True)
class Block:
    post: np.ndarray
    seg_code: np.ndarray
    seg_end: np.ndarray
    seg_count: np.ndarray
    word_seg: np.ndarray
    fwd_gaps: np.ndarray
    fwd_gap_ptr: np.ndarray
    fwd_codes: np.ndarray
    fwd_ptr: np.ndarray
    ids: np.ndarray
    ids_sorted: np.ndarray
    ids_rows: np.ndarray
    strong_ptr: np.ndarray
    strong_rows: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.ids)

    @cached_property
    def postings(self) -> int:
        return int(self.seg_count.sum(dtype=np.int64)) + len(self.seg_count)

    @cached_property
    def post16(self) -> np.ndarray:
        """``post`` read as 16-bit little-endian ids (for the 16-bit segments)."""
        return self.post.view("<u2")

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        indptr: np.ndarray,
        words: np.ndarray,
        codes: np.ndarray,
        vocabulary_size: int,
        has: sp.csr_matrix,
    ) -> Block:
        """A block of rows given as CSR parts (word ids sorted within a row, codes 1-255) and
        the rows x words matrix of the words each row has (:func:`indexer.filters.has_matrix`)."""
        if not 0 < len(ids) <= MAX_ROWS or len(indptr) != len(ids) + 1:
            raise ValueError(f"a block holds 1-{MAX_ROWS} rows, got {len(ids)}")
        indptr = np.asarray(indptr, dtype=np.int64) - indptr[0]
        words = np.ascontiguousarray(words, dtype=np.int32)
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if 3 * len(words) >= MAX_BYTES:  # bytes <= 2 per posting + 1 pad per segment
            raise ValueError(
                f"a block of {len(ids)} rows with {len(words):,} postings is too dense for the "
                "compact layout (30-bit offsets); build the index with fewer rows per block"
            )
        small = 16 * len(words) < vocabulary_size * impact_kernels.CODES  # a sort is cheaper
        build = kernels.build_small_block if small else kernels.build_block
        ids16, seg_code, seg_postings, word_seg = build(indptr, words, codes, vocabulary_size)
        post, seg_end, seg_count = kernels.pack_segments(ids16, seg_postings)
        gaps, gap_ptr = kernels.encode_gaps(indptr, words)
        order = np.argsort(ids, kind="stable")
        strong = sp.csr_matrix(has.T, dtype=bool)  # words x rows
        strong.sort_indices()
        return cls(
            post, seg_code, seg_end, seg_count, word_seg, gaps, gap_ptr.astype(np.uint32), codes,
            indptr.astype(np.uint32), ids, ids[order], order.astype(np.int32),
            strong.indptr.astype(np.uint32), strong.indices.astype(np.uint16),
        )  # fmt: skip

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the arrays, each as a new file (temporary name, then renamed into place): a
        file that an earlier index version hard-links is replaced, never written over."""
        directory.mkdir(parents=True, exist_ok=True)
        for f in fields(self):
            target = directory / f"{f.name}.npy"
            tmp = directory / f".{f.name}.tmp-{os.getpid()}.npy"
            np.save(tmp, getattr(self, f.name))
            os.replace(tmp, target)

    @classmethod
    def load(cls, directory: Path, mmap: bool) -> Block:
        mode: Literal["r"] | None = "r" if mmap else None
        missing = [f.name for f in fields(cls) if not (directory / f"{f.name}.npy").is_file()]
        if missing:
            raise ValueError(
                f"{directory} is not a complete compact block (missing {', '.join(missing)}): the "
                "index is damaged or from another version; rebuild it (`lexvla index reindex`)"
            )
        arrays = {f.name: np.load(directory / f"{f.name}.npy", mmap_mode=mode) for f in fields(cls)}
        # plain ndarray views of the maps (the map stays alive as their base): numba unboxes an
        # np.memmap argument several times slower than an ndarray, with the GIL held, and a
        # search passes ~100 of them to its kernels
        return cls(**{name: np.asarray(a) for name, a in arrays.items()})

    def populate(self) -> None:
        """Map every page of a memory-mapped block now (read from the page cache or disk).

        A search touches scattered pages (candidate rows, top segments); each first touch in a
        process costs a page fault, which made cold queries several times slower than warm
        ones. Linux's MADV_POPULATE_READ (5.14+) maps them all in one call; elsewhere one byte
        per page is read.
        """
        for f in fields(self):
            array = getattr(self, f.name)
            handle = getattr(array.base, "_mmap", None)  # a view of the np.memmap (load)
            if handle is None or array.nbytes == 0:
                continue
            try:
                handle.madvise(_MADV_POPULATE_READ)
            except (OSError, ValueError, AttributeError):
                int(array.reshape(-1).view(np.uint8)[::4096].sum())

    # --- reading ------------------------------------------------------------------------------
    def find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of the ids ``keys`` (bytes array); -1 where the block does not hold one."""
        if self.rows == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.ids_sorted, keys)
        safe = np.minimum(pos, self.rows - 1)
        found = (pos < self.rows) & (self.ids_sorted[safe] == keys)
        return np.where(found, self.ids_rows[safe], -1).astype(np.int64)

    def add_counts(self, counts: np.ndarray, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) this block's postings in planning counts (V x 256)."""
        kernels.add_segment_counts(self.seg_code, self.seg_count, self.word_seg, counts, sign)

    def segment(self, s: int) -> np.ndarray:
        """The local image ids of segment ``s`` (increasing)."""
        return kernels.segment_ids(self.post, self.post16, self.seg_end, s)

    def having(self, word: int) -> np.ndarray:
        """Rows that have ``word`` (the word filters' rule)."""
        return self.strong_rows[self.strong_ptr[word] : self.strong_ptr[word + 1]]

    def decode(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward rows as CSR parts: (indptr, word ids, codes)."""
        return kernels.decode_rows(
            np.asarray(rows, dtype=np.int64),
            self.fwd_gap_ptr, self.fwd_gaps, self.fwd_ptr, self.fwd_codes,
        )  # fmt: skip

    def rescore(self, rows: np.ndarray, values: np.ndarray, dense_query: np.ndarray) -> np.ndarray:
        """Quantised scores of ``rows`` against a dense float32 query."""
        return impact_kernels.rescore(
            np.asarray(rows, dtype=np.int64),
            self.fwd_gap_ptr, self.fwd_gaps, self.fwd_ptr, self.fwd_codes, values, dense_query,
        )  # fmt: skip


def quantised_block(
    ids: Sequence[str],
    rows: sp.csr_matrix,
    vocabulary_size: int,
    has: sp.csr_matrix | None = None,
    min_scale: float = 0.0,
) -> tuple[Block, float, float]:
    """A block of float rows (word ids sorted within a row), quantised with the scale of the
    engine's docstring, or ``min_scale`` if larger: (the block, its scale, its largest
    |weight - dequantised weight|). ``has`` (rows x words) gives the words each row has; by
    default they come from ``rows``."""
    top = float(rows.data.max()) if rows.nnz else 0.0
    scale = max(top / (kernels.CODES - 1), min_scale)
    scale = scale if scale > 0 else 1.0
    indptr, words, codes, error = kernels.quantise_rows(
        rows.indptr.astype(np.int64), rows.indices, rows.data, scale
    )
    strong = wf.has_matrix(rows) if has is None else has
    block = Block.build(encode_ids(ids), indptr, words, codes, vocabulary_size, strong)
    return block, scale, float(error)
