"""Merging the compact index's small blocks (what incremental adds and deletes leave behind).

Every ``lexvla index add`` seals its images into new blocks, the last one partial, and deletes
only clear live bits. After many small adds an index holds many small blocks: each costs a
kernel call, a heap scan and its own per-word tables in every search, and its deleted rows stay
on disk. Before an index is saved, runs of blocks with under half a block of live
images are merged into full ones (Lucene merges its small segments the same way), and their
deleted rows are dropped on the way.

A merged block is built from the source blocks' own rows: their codes times their scales are
quantised again with the merged block's scale. Its quantisation error is therefore bounded by
the sources' largest error plus the new rounding, and that sum is what the block records
(``error_bound`` stays a bound). The strong words the word filters use are carried over from
the sources, not recomputed from the dequantised rows, so a filter gives the same images before
and after a merge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from indexer.engines.compact.block import Block, quantised_block
from indexer.engines.compact.snapshot import Snapshot


def merge_groups(live_rows: list[int], block_rows: int) -> list[list[int]]:
    """Groups of consecutive small blocks (under half of ``block_rows`` live rows) that fit in
    one block together; only groups of two or more are worth merging."""
    groups: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for b, rows in enumerate(live_rows):
        if rows >= block_rows // 2 or filled + rows > block_rows:
            if len(current) > 1:
                groups.append(current)
            current, filled = [], 0
        if rows < block_rows // 2:
            current.append(b)
            filled += rows
    if len(current) > 1:
        groups.append(current)
    return groups


def merged_block(
    blocks: list[Block], scales: list[float], lives: list[np.ndarray], errors: list[float],
    vocabulary_size: int,
) -> tuple[Block, float, float]:  # fmt: skip
    """One block of the live rows of ``blocks`` (in order): (block, scale, error bound)."""
    ids: list[str] = []
    parts, strong = [], []
    for block, scale, live in zip(blocks, scales, lives, strict=True):
        rows = np.flatnonzero(live)
        indptr, words, codes = block.decode(rows)
        values = (codes.astype(np.float32) * np.float32(scale)).astype(np.float32)
        parts.append(sp.csr_matrix((values, words, indptr), shape=(len(rows), vocabulary_size)))
        has = sp.csr_matrix(
            (np.ones(len(block.strong_rows), bool), block.strong_rows, block.strong_ptr),
            shape=(vocabulary_size, block.rows),
        )
        strong.append(sp.csr_matrix(has.T)[rows])
        ids += [bytes(i).decode("utf-8") for i in block.ids[rows]]
    rows = sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32)
    rows.sort_indices()
    merged, scale, error = quantised_block(
        ids, rows, vocabulary_size, has=sp.csr_matrix(sp.vstack(strong, format="csr"))
    )
    return merged, scale, error + max(errors)


def merge_small(
    snap: Snapshot, errors: list[float], sources: list[Path | None], block_rows: int
) -> tuple[Snapshot, list[float], list[Path | None]] | None:
    """The snapshot with its runs of small blocks merged (:func:`merge_groups`), with the
    blocks' errors and source folders (None: not on disk yet); None when nothing merges."""
    groups = merge_groups([int(m.sum()) for m in snap.live], block_rows)
    if not groups:
        return None
    starts = {g[0]: g for g in groups}
    merged = {b for g in groups for b in g}
    counts = snap.counts.copy()
    kept: list[tuple[Block, float, np.ndarray, float, Path | None]] = []
    for b, block in enumerate(snap.blocks):
        if b not in merged:
            kept.append((block, float(snap.scales[b]), snap.live[b], errors[b], sources[b]))
            continue
        block.add_counts(counts, -1)
        group = starts.get(b)
        if group is None or not any(snap.live[i].any() for i in group):
            continue  # merged into its group's first block, or nothing live: dropped
        new, scale, error = merged_block(
            [snap.blocks[i] for i in group], [float(snap.scales[i]) for i in group],
            [snap.live[i] for i in group], [errors[i] for i in group], len(snap.counts),
        )  # fmt: skip
        new.add_counts(counts, 1)
        kept.append((new, scale, np.ones(new.rows, dtype=bool), error, None))
    merged_snap = Snapshot(
        [k[0] for k in kept], np.array([k[1] for k in kept], dtype=np.float64),
        [k[2] for k in kept], counts,
    )  # fmt: skip
    return merged_snap, [k[3] for k in kept], [k[4] for k in kept]
