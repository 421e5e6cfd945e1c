"""Optimising after live writes: the compact engine rewritten in a batch build's shape
(``CompactIndex.optimize``), a published version with folded metadata columns
(``LiveWriter.optimize``, ``lexvla index optimize``), and a server doing it when writes pause."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from compact_fixtures import V, topical_rows
from test_indexer_live_sequence import add, assert_index_is_the_store, writer  # noqa: F401

from indexer.cli import main as index_cli
from indexer.engines import open_index
from indexer.engines.compact.block import MAX_ROWS
from indexer.engines.compact.index import CompactIndex
from indexer.engines.compact.merge import fresh_shape
from indexer.engines.versions import current_version


def test_the_fresh_shape_fills_blocks_evenly_in_order_and_splits_a_block_between_two():
    deleted = np.ones(30_000, bool)
    deleted[::30] = False  # 1,000 deleted rows
    live = [np.ones(40_000, bool), deleted, np.ones(5, bool), np.zeros(7, bool)]
    shape = fresh_shape(live)  # 69,005 live rows: two blocks, as a build of them makes
    per_block = -(-69_005 // 2)
    assert [[b for b, _ in parts] for parts in shape] == [[0], [0, 1, 2]]
    assert [sum(int(r.sum()) for _, r in parts) for parts in shape] == [
        per_block,
        69_005 - per_block,
    ]
    first, rest = shape[0][0][1], shape[1][0][1]
    assert not (first & rest).any() and (first | rest).all()  # block 0 split, every row once
    assert np.flatnonzero(first).max() < np.flatnonzero(rest).min()  # in order
    assert (shape[1][1][1] == deleted).all()  # deleted rows are not taken
    halves = fresh_shape([np.ones(MAX_ROWS // 2, bool)] * 2)  # a build's shape already
    assert [[(b, bool(r.all())) for b, r in parts] for parts in halves] == [
        [(0, True)],
        [(1, True)],
    ]


def written_one_by_one(rows: sp.csr_matrix, ids: list[str], seed: int):
    """An index after single adds merged by tiers (as each live write saves), with deletes;
    the ids deleted."""
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 64  # tiers of 1, 8 and 64 rows
    rng = np.random.default_rng(seed)
    deleted: set[str] = set()
    for n, image_id in enumerate(ids):
        index.add([image_id], rows[n])
        if n % 4 == 3:
            victim = ids[int(rng.integers(0, n))]
            deleted |= {victim} if index.delete([victim]) else set()
        index.merge_small_blocks()
    return index, deleted


def engine_bytes(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_optimize_leaves_a_fresh_builds_blocks_and_answers(tmp_path):
    rows, topic_words = topical_rows(300, seed=11)
    ids = [f"img-{i:03d}" for i in range(300)]
    index, deleted = written_one_by_one(rows, ids, seed=11)
    assert len(index._snap.blocks) > 3 and any(not m.all() for m in index._snap.live)
    alive = [i for i in ids if i not in deleted]
    fresh = CompactIndex.create(V, pruning=None, expected_rows=len(alive))
    fresh.add(alive, rows[[ids.index(i) for i in alive]])
    fresh.build()

    assert index.optimize() is True
    snap = index._snap
    assert len(snap.blocks) == len(fresh._snap.blocks) == 1 and snap.live[0].all()
    assert [bytes(i).decode() for i in snap.blocks[0].ids] == alive  # insertion order kept
    assert index.count() == len(alive)
    assert index.optimize() is False  # already in that shape: nothing rewritten
    exact = rows.toarray().astype(np.float64)
    live_rows = np.array([ids.index(i) for i in alive])
    rng = np.random.default_rng(3)
    for t in range(30):  # the engine's top 10 is the exact one up to scores within its bound
        query = np.zeros(V, np.float32)
        query[topic_words[t][:4]] = rng.uniform(0.3, 1.0, 4)
        q = sp.csr_matrix(query)
        tenth = np.sort(exact[live_rows] @ query)[-10]
        bound = index.error_bound(q)
        hits = index.search(q, 10)
        assert len(hits) == 10 and not {i for i, _ in hits} & deleted
        assert all(abs(s - exact[ids.index(i)] @ query) <= bound for i, s in hits)
        assert all(exact[ids.index(i)] @ query >= tenth - 2 * bound for i, _ in hits)
    for image_id in alive[::9]:  # every live image is still its own top hit
        assert index.search(sp.csr_matrix(rows[ids.index(image_id)]), 1)[0][0] == image_id

    index.save(tmp_path / "optimised")
    fresh.save(tmp_path / "fresh")
    assert engine_bytes(tmp_path / "optimised") <= 1.02 * engine_bytes(tmp_path / "fresh")
    reopened = CompactIndex.open(tmp_path / "optimised")
    assert reopened.manifest.deleted == 0 and reopened.count() == len(alive)
    q = sp.csr_matrix(rows[5])
    assert reopened.search(q, 10) == index.search(q, 10)


def blocks_of(index_dir) -> int:
    return len(list((current_version(index_dir) / "blocks").iterdir()))


def test_the_writer_publishes_an_optimised_version_that_later_writes_build_on(writer):  # noqa: F811
    for n in range(12):
        add(writer, f"live/{n:02d}", 100 + n, album="A")
    writer.delete("img/003")
    assert writer.written and blocks_of(writer.index_dir) > 1
    fields = open_index(writer.index_dir).fields
    assert fields is not None and not fields.plain  # a delta on the built base
    sequence = writer.store.catalog.sequence()

    version = writer.optimize()
    assert version == current_version(writer.index_dir).name and not writer.written
    assert blocks_of(writer.index_dir) == 1
    index = open_index(writer.index_dir)
    assert index.fields is not None and index.fields.plain and index.fields.sequence == sequence
    assert index.manifest.deleted == 0
    index.close()
    assert_index_is_the_store(writer)
    assert writer.optimize() is None  # nothing left to rewrite

    row = add(writer, "after", 7)  # in step: the fast path, no full comparison with the store
    assert writer.full_reconciles == []  # type: ignore[attr-defined]
    index = open_index(writer.index_dir)
    assert index.search(row, 1)[0][0] == "after"
    index.close()
    assert_index_is_the_store(writer)


def test_the_optimize_command(writer, capsys):  # noqa: F811
    index_dir = str(writer.index_dir)
    for n in range(5):
        add(writer, f"live/{n}", 200 + n)
    writer.close()
    assert index_cli(["optimize", "--index", index_dir]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"published {current_version(index_dir)}"
    assert blocks_of(index_dir) == 1
    assert_index_is_the_store(writer)
    assert index_cli(["optimize", "--index", index_dir]) == 0
    assert "nothing to rewrite" in capsys.readouterr().out
    assert index_cli(["optimize", "--index", index_dir + "-missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lexvla index optimize:") and "\n" not in err


@pytest.mark.parametrize("after_s", [0.0, 0.3])
def test_a_server_optimises_once_writes_pause(writer, after_s):  # noqa: F811
    import asyncio
    from types import SimpleNamespace

    from service.state import ServiceState

    for n in range(6):
        add(writer, f"live/{n}", 300 + n)
    state = ServiceState.__new__(ServiceState)
    state._writer, state._optimizing = writer, None
    state.settings = SimpleNamespace(optimize_after_s=after_s)  # type: ignore[assignment]

    async def follow_ticks() -> None:
        for _ in range(20):
            state._optimize_when_quiet()
            if state._optimizing is not None:
                await state._optimizing
            await asyncio.sleep(0.05)

    blocks = blocks_of(writer.index_dir)
    asyncio.run(follow_ticks())
    if after_s == 0:  # 0: never
        assert writer.written and blocks_of(writer.index_dir) == blocks
    else:
        assert not writer.written and blocks_of(writer.index_dir) == 1
        assert_index_is_the_store(writer)
