"""indexer.engines.compact.merge: the tiered merge policy, the merged blocks' error bound, and
an index written one image per version (as live writes do) against a fresh build."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import scipy.sparse as sp
from compact_fixtures import V, topical_rows

from indexer import scoring
from indexer.engines.compact import block_kernels
from indexer.engines.compact.block import quantised_block
from indexer.engines.compact.index import CompactIndex
from indexer.engines.compact.merge import DELETED_SHARE, FACTOR, merge_groups, merged_block, tier


def test_tiers_and_groups():
    assert [tier(n, 512) for n in (1, 8, 9, 64, 65, 512)] == [3, 2, 1, 1, 0, 0]
    assert merge_groups([1] * 8, [1] * 8, 512) == [list(range(8))]
    assert merge_groups([1] * 7, [1] * 7, 512) == []  # a tier fills up first
    # eight singles make a block of 8, the eighth of its tier: one merge of all 22 blocks
    sizes = [64] * 7 + [8] * 7 + [1] * 8
    assert merge_groups(sizes, sizes, 512) == [list(range(22))]
    # tier 0: blocks under half merge while they fit together; half full ones stay
    assert merge_groups([200, 300, 200, 200, 100], [200, 300, 200, 200, 100], 512) == [
        [0, 2],
        [3, 4],
    ]
    # deleted rows past a third: rewritten alone; nothing live: dropped
    assert merge_groups([300, 100, 0], [300, 400, 5], 512) == [[1], [2]]
    assert merge_groups([300, 300], [400, 460], 512) == [[1]]  # 100 of 400, 160 of 460


def simulate(steps: int, block_rows: int, delete_every: int, seed: int = 0):
    """Block sizes (live, rows) under single adds and deletes, merged as each save merges;
    yields them after every save with the rows rewritten so far."""
    rng = np.random.default_rng(seed)
    blocks: list[list[int]] = []
    rewritten = 0
    for step in range(steps):
        blocks.append([1, 1])
        if delete_every and step % delete_every == 0:
            alive = [b for b in blocks if b[0] > 0]
            alive[rng.choice(len(alive))][0] -= 1
        groups = merge_groups([b[0] for b in blocks], [b[1] for b in blocks], block_rows)
        merged = {b for g in groups for b in g}
        for group in groups:
            live = sum(blocks[b][0] for b in group)
            rewritten += live
            if live:
                blocks.append([live, live])
        blocks = [b for n, b in enumerate(blocks) if n not in merged]
        yield blocks, rewritten


@pytest.mark.parametrize("delete_every", [0, 3])
def test_single_adds_keep_few_blocks_and_rewrite_each_row_a_few_times(delete_every):
    block_rows, steps = 4096, 6000
    tiers = tier(1, block_rows) + 1
    blocks, rewritten = [], 0
    for blocks, rewritten in simulate(steps, block_rows, delete_every):  # noqa: B007
        by_tier: dict[int, int] = {}
        for live, _ in blocks:
            by_tier[tier(live, block_rows)] = by_tier.get(tier(live, block_rows), 0) + 1
        assert all(count < FACTOR for t, count in by_tier.items() if t > 0)
        assert sum(2 * live < block_rows for live, _ in blocks if tier(live, block_rows) == 0) <= 1
        assert all(rows - live <= DELETED_SHARE * rows for live, rows in blocks)
        assert len(blocks) <= (FACTOR - 1) * (tiers - 1) + 1 + steps // (block_rows // 2)
    # every row climbs each tier once, plus a few merges in tier 0 (not O(steps) each)
    assert rewritten <= steps * (tiers + 1)
    if not delete_every:
        assert sorted(live for live, _ in blocks)[-1] == block_rows  # two halves made a block


def quantised(rows: sp.csr_matrix, first: int, scale_by: float = 1.0):
    part = sp.csr_matrix(rows * scale_by, dtype=np.float32)
    part.sort_indices()
    ids = [f"r{first + i}" for i in range(part.shape[0])]
    return quantised_block(ids, part, V), part


def check_bound(block, scale: float, error: float, truth: sp.csr_matrix) -> None:
    """Every weight of ``block`` (dropped ones too) within ``error`` of the float rows."""
    indptr, words, codes = block.decode(np.arange(block.rows))
    values = (codes.astype(np.float64) * scale).astype(np.float32)
    back = sp.csr_matrix((values, words, indptr), shape=(block.rows, V)).toarray()
    worst = np.abs(back.astype(np.float64) - truth.toarray()).max()
    assert worst <= error * (1 + 1e-6) + 1e-9


def test_merged_blocks_stay_within_their_bound_over_several_levels():
    rows, _ = topical_rows(240, seed=5)
    parts = [quantised(rows[i : i + 40], i, 1 + 0.3 * (i % 80) / 40) for i in range(0, 240, 40)]
    blocks = [(b, s, e) for (b, s, e), _ in parts]
    truths = [truth for _, truth in parts]
    for (block, scale, error), truth in zip(blocks, truths, strict=True):
        check_bound(block, scale, error, truth)
    live = [np.ones(40, bool)] * 2
    level = []
    for n in range(0, 6, 2):  # level 1: pairs of different scales
        merged = merged_block(
            [blocks[n][0], blocks[n + 1][0]], [blocks[n][1], blocks[n + 1][1]], live,
            [blocks[n][2], blocks[n + 1][2]], V,
        )  # fmt: skip
        truth = sp.vstack([truths[n], truths[n + 1]], format="csr")
        assert merged[1] == max(blocks[n][1], blocks[n + 1][1])
        assert merged[2] > max(blocks[n][2], blocks[n + 1][2])  # one source was re-rounded
        check_bound(*merged, truth)
        level.append((merged, truth))
    top = merged_block(
        [m[0] for m, _ in level], [m[1] for m, _ in level], [np.ones(80, bool)] * 3,
        [m[2] for m, _ in level], V,
    )  # fmt: skip
    check_bound(*top, sp.vstack([t for _, t in level], format="csr"))
    assert top[0].ids.tolist() == [f"r{i}".encode() for i in range(240)]


def test_blocks_of_one_scale_merge_by_copying_their_codes():
    rows, _ = topical_rows(60, seed=6)
    rows = sp.csr_matrix(rows, dtype=np.float32)
    rows.sort_indices()
    floor = float(rows.data.max()) / 255 * 1.5  # every block takes this scale
    made = [
        quantised_block([f"r{i}" for i in range(a, a + 20)], rows[a : a + 20], V, min_scale=floor)
        for a in (0, 20, 40)
    ]
    assert all(scale == floor for _, scale, _ in made)
    live = [np.ones(20, bool), np.r_[np.ones(10, bool), np.zeros(10, bool)], np.ones(20, bool)]
    block, scale, error = merged_block(
        [m[0] for m in made], [m[1] for m in made], live, [m[2] for m in made], V
    )
    assert scale == floor and error == max(m[2] for m in made)  # no new rounding
    codes = [m[0].decode(np.flatnonzero(keep))[2] for m, keep in zip(made, live, strict=True)]
    np.testing.assert_array_equal(block.decode(np.arange(block.rows))[2], np.concatenate(codes))
    check_bound(block, scale, error, rows[np.r_[0:30, 40:60]])


def test_small_blocks_are_built_by_a_sort_into_the_same_layout():
    rows = sp.random(30, V, density=0.02, random_state=7, format="csr", dtype=np.float32)
    rows.sort_indices()
    codes = np.random.default_rng(7).integers(1, 4, rows.nnz).astype(np.uint8)
    indptr = rows.indptr.astype(np.int64)
    counted = block_kernels.build_block(indptr, rows.indices, codes, V)
    for a, b in zip(counted, block_kernels.build_small_block(indptr, rows.indices, codes, V),
                    strict=True):  # fmt: skip
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def save_version(index: CompactIndex, folder: Path, n: int) -> Path:
    """Save into a temporary folder renamed into place, as versions.publish does (no fsync)."""
    tmp = folder / f".tmp-{n}"
    index.save(tmp)
    os.rename(tmp, folder / f"v{n:04d}")
    index.moved(folder / f"v{n:04d}")
    return folder / f"v{n:04d}"


def test_one_image_per_version_matches_a_fresh_build(tmp_path):
    """Add (or delete) one image, save a new version, open it (or go on with the index saved,
    which links its blocks from there), as live writes do: the blocks stay as the policy says,
    deleted rows are reclaimed, every weight is within its block's bound, and the engine's and
    the served top-10s agree with a fresh build of the same images."""
    from model.vocabulary import Vocabulary

    rows, topic_words = topical_rows(150, seed=8)
    ids = [f"img-{i:03d}" for i in range(150)]
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 64  # tiers of 1, 8 and 64 rows
    rng = np.random.default_rng(8)
    deleted: set[str] = set()
    saved = None
    for n, image_id in enumerate(ids):
        if saved is not None and n % 2:
            index = CompactIndex.open(saved)
        index.add([image_id], rows[n])
        if n % 5 == 4:  # a delete every fifth write, in the same version
            victim = ids[int(rng.integers(0, n))]
            deleted |= {victim} if index.delete([victim]) else set()
        saved = save_version(index, tmp_path, n)
        meta = json.loads((saved / "index.json").read_text())
        small = [e for e in meta["params"]["blocks"] if 2 * e["rows"] < 64]
        assert len(small) <= (FACTOR - 1) * 2 + 1
        assert meta["count"] == n + 1 - len(deleted)
        if n >= 2:
            shutil.rmtree(tmp_path / f"v{n - 2:04d}")  # pruned: the next save links from v{n}
    assert saved is not None
    final = CompactIndex.open(saved)
    snap = final._snap
    for b, block in enumerate(snap.blocks):
        assert (~snap.live[b]).sum() <= DELETED_SHARE * block.rows
        keep = np.flatnonzero(snap.live[b])
        truth = rows[[ids.index(bytes(i).decode()) for i in block.ids[keep]]]
        mine = snap.rows_of((b << 16) | keep, V).toarray().astype(np.float64)
        worst = np.abs(mine - truth.toarray()).max()
        assert worst <= final._errors[b] * (1 + 1e-5) + 1e-7  # error_bound's float slack
    alive = [i for i in ids if i not in deleted]
    fresh = CompactIndex.create(V, pruning=None)
    fresh.add(alive, rows[[ids.index(i) for i in alive]])
    exact = rows.toarray().astype(np.float64)
    position = {image_id: n for n, image_id in enumerate(ids)}

    class FloatRows:  # the corpus store's float rows
        def vectors_of(self, wanted):
            return rows[[position[i] for i in wanted]]

    store = cast(Any, FloatRows())
    vocabulary = Vocabulary(list(range(V)), [f"w{i}" for i in range(V)])
    for t in range(20):
        query = np.zeros(V, np.float32)
        query[topic_words[t][:4]] = rng.uniform(0.3, 1.0, 4)
        query[rng.integers(0, V, 20)] += 0.05
        q = sp.csr_matrix(query)
        scores = exact @ query
        best = sorted((i for i in alive if scores[position[i]] > 0),
                      key=lambda i: (-scores[position[i]], i))[:10]  # fmt: skip
        for engine in (final, fresh):
            bound = engine.error_bound(q)
            hits = engine.search(q, 10)
            assert all(abs(s - scores[position[i]]) <= bound for i, s in hits)
            # the engine's top-10 is the exact one up to scores within twice the bound
            tenth = scores[position[best[-1]]]
            assert all(scores[position[i]] >= tenth - 2 * bound for i, _ in hits)
            served = scoring.search(engine, store, vocabulary, q, exact=False, top_k=10)
            assert [h.id for h in served.hits] == best


def test_saving_again_into_the_same_folder(tmp_path):
    """Saving into the folder saved last (whose blocks the index now links from), unchanged and
    then after a merge replaced a block with deletions, leaves what the index holds: no block
    linked onto itself, no stale live mask."""
    rows, _ = topical_rows(67, seed=9)
    ids = [f"r{i}" for i in range(67)]
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 64
    index.add(ids[:8], rows[:8])  # one block of 8 (tier 1) ...
    index.build()
    assert index.delete([ids[2]]) == 1  # ... with a live mask
    for n in range(8, 11):
        index.add([ids[n]], rows[n])
        index.build()
    index.save(tmp_path)
    assert (tmp_path / "live" / "b000000.npy").is_file()
    index.save(tmp_path)  # nothing changed
    for start in range(11, 67, 8):  # seven more blocks of 8: the eight merge into block 0
        index.add(ids[start : start + 8], rows[start : start + 8])
        index.build()
    index.save(tmp_path)
    opened = CompactIndex.open(tmp_path)
    assert [b.rows for b in opened._snap.blocks] == [63, 1, 1, 1]
    alive = [i for i in ids if i != ids[2]]
    assert opened.count() == len(alive)
    np.testing.assert_allclose(
        opened.vectors_of(alive).toarray(), rows[[int(i[1:]) for i in alive]].toarray(),
        atol=max(opened._errors) * (1 + 1e-5) + 1e-7,
    )  # fmt: skip
