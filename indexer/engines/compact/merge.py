"""Merging the compact index's blocks: a tiered (logarithmic) policy, run before every save.

Every add seals its images into new blocks, the last one partial, and deletes only clear live
bits. A live write adds one image per version, so an index would otherwise grow a block per
image: each block costs a kernel call, a heap scan and its own per-word tables in every search,
and deleted rows stay on disk. :func:`merge_groups` decides what a save rewrites, in the manner
of Lucene's log and tiered merge policies (``mergeFactor`` segments of one level merge into one
of the next level; segments with many deletions are rewritten):

- **Tiers.** A block with ``n`` live rows is in tier ``k`` when ``block_rows / F**(k + 1) < n
  <= block_rows / F**k`` (``F`` = :data:`FACTOR`). As soon as ``F`` blocks of one tier ``k >=
  1`` exist, they merge into one block, of a lower tier, which always fits in ``block_rows``;
  tiers are taken deepest first, so a cascade (single adds completing every tier at once) is one
  merge of the original blocks.
- **Tier 0** holds blocks over ``block_rows / F`` rows: they merge, in groups that fit in one
  block, only while two or more are under half of ``block_rows``, so at most one block under
  half remains. Blocks of half or more stay as they are.
- **Deletions.** A block whose deleted rows exceed :data:`DELETED_SHARE` of its rows is
  rewritten without them (alone unless a tier merge takes it); a block with no live row is
  dropped.

After every save, fewer than ``F`` blocks are left in each tier ``k >= 1`` and at most one tier-0
block is under half full, so the blocks beyond the half-full ones number at most
``(F - 1) * log_F(block_rows) + 1``. A row is rewritten once per tier it climbs, about
``log_F(block_rows)`` times, plus a few times in tier 0 (each of those merges adds more than
``block_rows / F`` rows to its block): N single adds cost O(N log N) row writes, not O(N**2).

**Quantisation.** A merged block takes the largest of its sources' scales (so no weight is
clipped). A source of that scale keeps its codes as they are, exactly; the rows of another are
dequantised and quantised again, and that rounding is measured. Each source's error bound grows
by its own re-rounding only, and the merged block records the largest: a row's bound grows only
when its block is merged into one of a larger scale. Sealed partial blocks take at least the
index's largest scale (:meth:`CompactIndex._seal`), so the blocks that single adds leave share
one scale and merge exactly, however many tiers they climb. The strong words the word filters
use are carried over from the sources, not recomputed from the dequantised rows, so a filter
gives the same images before and after a merge.

**Optimising.** Tiers bound the work of each write, not the shape they leave: up to ``F - 1``
blocks per tier and the deleted rows under :data:`DELETED_SHARE` stay, and each costs every
search. :func:`optimised` rewrites the live rows, in order, into the blocks a batch build of
them makes (:func:`~indexer.engines.compact.block.balanced_block_rows`), as Lucene's
``forceMerge`` does when writes go quiet; a source block may be split between two new ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from indexer.engines.compact import block_kernels as kernels
from indexer.engines.compact.block import Block, balanced_block_rows
from indexer.engines.compact.snapshot import Snapshot

# Lucene's LogMergePolicy merges 10 segments a level by default; 8 divides the default block
# (65,536 = 2 * 8**5) so that full tiers end at exactly half a block, which one tier-0 merge fills
FACTOR = 8
# a rewrite reclaims at least a third of the rows it reads (Lucene's deletesPctAllowed: 33%)
DELETED_SHARE = 1 / 3


def tier(live: int, block_rows: int, factor: int = FACTOR) -> int:
    """The tier ``k`` with ``block_rows / factor**(k + 1) < live <= block_rows / factor**k``."""
    k = 0
    while live * factor ** (k + 1) <= block_rows:
        k += 1
    return k


def merge_groups(
    live_rows: list[int], rows: list[int], block_rows: int, factor: int = FACTOR
) -> list[list[int]]:
    """The blocks a save rewrites (module docstring), as groups of block numbers, each group
    becoming one block; a group of one is a block rewritten without its deleted rows (or
    dropped, when none is live). Groups are sorted by their first block."""
    units = [[b] for b, n in enumerate(live_rows) if n > 0]
    size = {u[0]: live_rows[u[0]] for u in units}  # live rows of a unit, by its first block
    for k in range(tier(1, block_rows, factor), 0, -1):
        same = [u for u in units if tier(size[u[0]], block_rows, factor) == k]
        for start in range(0, len(same) - factor + 1, factor):
            _combine(units, size, same[start : start + factor])
    group: list[list[int]] = []
    filled = 0
    for unit in [u for u in units if tier(size[u[0]], block_rows, factor) == 0]:
        if 2 * size[unit[0]] >= block_rows:
            continue
        if filled + size[unit[0]] > block_rows:
            if len(group) > 1:
                _combine(units, size, group)
            group, filled = [], 0
        group.append(unit)
        filled += size[unit[0]]
    if len(group) > 1:
        _combine(units, size, group)
    groups = [u for u in units if len(u) > 1]
    groups += [
        [b] for b, (n, total) in enumerate(zip(live_rows, rows, strict=True))
        if total and (n == 0 or total - n > DELETED_SHARE * total)
        and not any(b in u for u in groups)
    ]  # fmt: skip
    return sorted(groups)


def _combine(units: list[list[int]], size: dict[int, int], parts: list[list[int]]) -> None:
    """Replace ``parts`` of ``units`` by one unit of all their blocks, where the first was."""
    merged = sorted(b for part in parts for b in part)
    total = sum(size[part[0]] for part in parts)
    place = units.index(parts[0])
    for part in parts:
        units.remove(part)
    units.insert(min(place, len(units)), merged)
    size[merged[0]] = total


def merged_block(
    blocks: list[Block], scales: list[float], lives: list[np.ndarray], errors: list[float],
    vocabulary_size: int,
) -> tuple[Block, float, float]:  # fmt: skip
    """One block of the live rows of ``blocks`` (in order), at the largest of their scales:
    (block, scale, error bound). Codes of a source at that scale are kept; the others are
    re-quantised, and each source's bound grows by its measured re-rounding."""
    decoded = [
        block.decode(np.flatnonzero(live)) for block, live in zip(blocks, lives, strict=True)
    ]
    scale = max((s for s, d in zip(scales, decoded, strict=True) if len(d[2])), default=max(scales))
    ids, indptrs, words, codes, strong = [], [np.zeros(1, np.int64)], [], [], []
    error = 0.0
    for n, (indptr, row_words, row_codes) in enumerate(decoded):
        block, rows, worst = blocks[n], np.flatnonzero(lives[n]), 0.0
        if scales[n] != scale and len(row_codes):
            values = (row_codes.astype(np.float64) * scales[n]).astype(np.float32)
            indptr, row_words, row_codes, worst = kernels.quantise_rows(
                np.asarray(indptr, np.int64), row_words, values, scale
            )
        error = max(error, errors[n] + float(worst))
        indptrs.append(np.asarray(indptr[1:], np.int64) - indptr[0] + indptrs[-1][-1])
        words.append(row_words)
        codes.append(row_codes)
        has = sp.csr_matrix(
            (np.ones(len(block.strong_rows), bool), block.strong_rows, block.strong_ptr),
            shape=(vocabulary_size, block.rows),
        )
        strong.append(sp.csr_matrix(has.T)[rows])
        ids.append(block.ids[rows])
    merged = Block.build(
        np.concatenate(ids), np.concatenate(indptrs), np.concatenate(words),
        np.concatenate(codes), vocabulary_size, sp.csr_matrix(sp.vstack(strong, format="csr")),
    )  # fmt: skip
    return merged, scale, error


def merge_small(
    snap: Snapshot, errors: list[float], sources: list[Path | None], block_rows: int
) -> tuple[Snapshot, list[float], list[Path | None]] | None:
    """The snapshot with the groups of :func:`merge_groups` merged, with the blocks' errors and
    source folders (None: not on disk yet); None when nothing is rewritten."""
    groups = merge_groups(
        [int(m.sum()) for m in snap.live], [b.rows for b in snap.blocks], block_rows
    )
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


def fresh_shape(live: list[np.ndarray]) -> list[list[tuple[int, np.ndarray]]]:
    """The blocks a batch build of the live rows makes, each as the (source block, rows of it)
    parts it takes, in order (module docstring, "Optimising")."""
    total = sum(int(m.sum()) for m in live)
    per_block = balanced_block_rows(total)
    chunks: list[list[tuple[int, np.ndarray]]] = [[]]
    filled = 0
    for b, mask in enumerate(live):
        rows = np.flatnonzero(mask)
        while len(rows):
            take = min(len(rows), per_block - filled)
            part = np.zeros(len(mask), dtype=bool)
            part[rows[:take]] = True
            chunks[-1].append((b, part))
            rows, filled = rows[take:], filled + take
            if filled == per_block:
                chunks.append([])
                filled = 0
    return [c for c in chunks if c]


def optimised(
    snap: Snapshot, errors: list[float], sources: list[Path | None]
) -> tuple[Snapshot, list[float], list[Path | None]] | None:
    """The snapshot in a batch build's shape (:func:`fresh_shape`), with the blocks' errors and
    source folders; None when it has that shape already: as many blocks, none with a deleted
    row."""
    shape = fresh_shape(snap.live)
    if len(shape) == len(snap.blocks) and all(bool(m.all()) for m in snap.live):
        return None
    counts = np.zeros_like(snap.counts)
    kept: list[tuple[Block, float, float, Path | None]] = []
    for parts in shape:
        b, rows = parts[0]
        if len(parts) == 1 and bool(rows.all()):  # a whole block without deletions: kept
            kept.append((snap.blocks[b], float(snap.scales[b]), errors[b], sources[b]))
        else:
            block, scale, error = merged_block(
                [snap.blocks[b] for b, _ in parts], [float(snap.scales[b]) for b, _ in parts],
                [rows for _, rows in parts], [errors[b] for b, _ in parts], len(snap.counts),
            )  # fmt: skip
            kept.append((block, scale, error, None))
        kept[-1][0].add_counts(counts, 1)
    fresh = Snapshot(
        [k[0] for k in kept], np.array([k[1] for k in kept], dtype=np.float64),
        [np.ones(k[0].rows, bool) for k in kept], counts,
    )  # fmt: skip
    return fresh, [k[2] for k in kept], [k[3] for k in kept]
