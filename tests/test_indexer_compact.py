"""indexer.engines.compact: the quantised impact index against the exact memory engine."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.engines import block_kernels, impact_kernels, open_index, publish
from indexer.engines.compact import CompactIndex, ImpactPruning
from indexer.engines.compact_block import balanced_block_rows
from indexer.engines.memory import MemoryIndex

V = 2000
ROOT = Path(__file__).resolve().parent.parent


P = 1.0 / (np.arange(V) + 5.0)
P /= P.sum()  # Zipf word popularity


def topical_rows(n: int, seed: int, active: int = 150) -> tuple[sp.csr_matrix, np.ndarray]:
    """Unit rows: Zipf background words plus a few strong words of one of 50 topics each, so
    that top-10s are decided by real score gaps (as for LexVLA images), not by noise."""
    rng = np.random.default_rng(seed)
    p = P
    topic_words = rng.choice(V, size=(50, 8), replace=False)
    topics = rng.integers(0, 50, size=n)
    dense = np.zeros((n, V), dtype=np.float32)
    for r in range(n):
        words = rng.choice(V, size=active, replace=False, p=p)
        dense[r, words] = rng.lognormal(-3.5, 0.8, size=active)
        strong = topic_words[topics[r]][rng.random(8) < 0.7]
        dense[r, strong] = rng.lognormal(-1.5, 0.4, size=len(strong))
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return sp.csr_matrix(dense), topic_words


@pytest.fixture(scope="module")
def corpus():
    rows, topic_words = topical_rows(6000, seed=0)
    rng = np.random.default_rng(1)
    queries = np.zeros((60, V), dtype=np.float32)
    for i in range(60):
        queries[i, topic_words[i % 50][:5]] = rng.uniform(0.3, 1.0, 5)
        queries[i, rng.choice(V, 40, replace=False, p=P)] += rng.exponential(0.05, 40)
    ids = [f"img-{i:05d}" for i in range(rows.shape[0])]
    return ids, rows, sp.csr_matrix(queries)


@pytest.fixture(scope="module")
def pair(corpus):
    ids, rows, _ = corpus
    compact = CompactIndex.create(V, pruning=None, threads=2)
    compact.block_rows = 2500  # several blocks, one of them partial
    for start in range(0, len(ids), 1000):
        compact.add(ids[start : start + 1000], rows[start : start + 1000])
    memory = MemoryIndex.create(V)
    memory.add(ids, rows)
    return compact, memory


def test_exact_search_is_within_the_quantisation_bound_of_float32(corpus, pair):
    ids, rows, queries = corpus
    compact, memory = pair
    exact_all = rows.toarray().astype(np.float64)
    overlap = []
    for n in range(queries.shape[0]):
        q = queries[n]
        found = compact.search(q, 10)
        truth = memory.search(q, 10)
        bound = compact.error_bound(q)
        assert 0 < bound < 0.05
        scores = exact_all @ q.toarray().ravel()
        for image_id, score in found:
            assert abs(score - scores[ids.index(image_id)]) <= bound
        # a float-exact hit can only be missed if it is within twice the bound of the 10th
        tenth = sorted(scores, reverse=True)[9]
        for image_id, score in truth:
            if score > tenth + 2 * bound:
                assert image_id in {i for i, _ in found}
        overlap.append(len({i for i, _ in found} & {i for i, _ in truth}) / 10)
    assert np.mean(overlap) >= 0.99


def test_pruned_search_recall_and_exact_rescoring(corpus, pair):
    ids, _, queries = corpus
    compact, _ = pair
    pruning = ImpactPruning(budget=0.05, min_postings=0, candidates=100, per_word=0)
    recall = []
    for n in range(queries.shape[0]):
        q = queries[n]
        exact = compact.search(q, 10, pruning=None)
        threshold, capacity = compact._scorer.plan(
            compact._snapshot(), q.indices, q.data, pruning, 10
        )
        assert threshold > 0 and capacity == 100  # really pruned: 5% of the postings
        pruned = compact.search(q, 10, pruning=pruning)
        exact_scores = dict(compact.search(q, len(ids), pruning=None))
        for image_id, score in pruned:  # pruned hits carry their complete quantised scores
            assert score == pytest.approx(exact_scores[image_id], rel=1e-5)
        recall.append(len({i for i, _ in pruned} & {i for i, _ in exact}) / 10)
    assert np.mean(recall) >= 0.99


def test_pruning_is_never_planned_when_exact_costs_no_more(pair, corpus):
    compact, _ = pair
    q = corpus[2][0]
    # the default budget (200k postings) exceeds everything this small corpus holds: exact
    assert compact._scorer.plan(compact._snapshot(), q.indices, q.data, ImpactPruning(), 10) == (
        0.0,
        10,
    )
    assert compact.search(q, 10) == compact.search(q, 10, pruning=None)


def test_long_queries_read_a_smaller_share_of_their_postings(pair):
    """Past ``long_words`` query words the planned share falls as (long_words / words) **
    falloff; the plan reads that share of the query's postings (within the codes' steps)."""
    compact, _ = pair
    default = ImpactPruning()
    assert default.budget_for(30) == default.budget_for(100) == default.budget
    assert default.budget_for(300) == pytest.approx(0.1 * (1 / 3) ** 0.2)  # 0.080
    assert default.budget_for(200) > default.budget_for(300) > default.budget_for(1000)
    assert ImpactPruning(falloff=0.0).budget_for(300) == default.budget
    rng = np.random.default_rng(7)
    words = np.sort(rng.choice(V, 300, replace=False))
    weights = rng.exponential(0.05, 300).astype(np.float32)
    snap = compact._snapshot()
    reference = np.arange(256) * snap.scales.max()

    def share_read(pruning: ImpactPruning) -> float:
        threshold, _ = compact._scorer.plan(snap, words, weights, pruning, 10)
        read = [
            snap.counts[w, weight * reference >= threshold].sum()
            for w, weight in zip(words, weights.astype(np.float64), strict=True)
        ]
        return float(np.sum(read) / snap.counts[words].sum())

    falling = ImpactPruning(min_postings=0, candidates=10, per_word=0.0)  # little to re-score
    flat = dataclasses.replace(falling, falloff=0.0)
    assert 0.9 * flat.budget <= share_read(flat) <= flat.budget
    assert 0.9 * falling.budget_for(300) <= share_read(falling) <= falling.budget_for(300)


def test_paging_threads_and_batches_agree(corpus, pair):
    _, _, queries = corpus
    compact, _ = pair
    q = queries[7]
    top = compact.search(q, 20)
    assert compact.search(q, 10, offset=10) == top[10:]
    single = CompactIndex(compact.manifest, None, compact.block_rows, threads=1)
    single._snap = compact._snapshot()
    assert single.search(q, 20) == top
    assert compact.search_batch(queries[:3], 5) == [compact.search(queries[i], 5) for i in range(3)]
    with pytest.raises(ValueError, match="k must be positive"):
        compact.search(q, 0)


def test_add_delete_vectors_count(corpus):
    ids, rows, queries = corpus
    index = CompactIndex.create(V, pruning=None)
    index.add(ids[:500], rows[:500])
    with pytest.raises(ValueError, match="already in the index"):
        index.add([ids[3]], rows[3])
    assert index.count() == 500
    assert index.delete([ids[3], ids[4], "no-such-image", ids[4]]) == 2  # named twice: once
    assert index.count() == 498
    with pytest.raises(KeyError, match=ids[3]):
        index.vectors_of([ids[3]])
    assert ids[3] not in {i for i, _ in index.search(queries[0], 500)}
    index.add([ids[3]], rows[3])  # a deleted id can be added again
    back = index.vectors_of([ids[3], ids[10]]).toarray()
    scale = index._snap.scales.max()
    assert np.abs(back - rows[[3, 10]].toarray()).max() <= scale / 2 + 1e-7


def test_save_open_mmap_and_versions_share_blocks(tmp_path, corpus, pair):
    ids, _, queries = corpus
    compact, _ = pair
    first = publish(compact, tmp_path / "index")
    opened = open_index(tmp_path / "index")
    assert isinstance(opened, CompactIndex) and opened.count() == len(ids)
    post = opened._snap.blocks[0].post  # an ndarray view of the file's map (cheap to unbox)
    assert type(post) is np.ndarray and isinstance(post.base, np.memmap)
    for n in range(5):
        assert opened.search(queries[n], 10) == compact.search(queries[n], 10)
    assert opened.delete([ids[0]]) == 1
    second = publish(opened, tmp_path / "index")
    block = "blocks/b000000/post.npy"
    assert os.stat(first / block).st_ino == os.stat(second / block).st_ino  # hard-linked
    reopened = open_index(tmp_path / "index")
    assert reopened.count() == len(ids) - 1
    assert json.loads((second / "index.json").read_text())["deleted"] == 1


def test_publishing_merges_small_blocks_and_search_stays_within_the_bound(tmp_path, corpus):
    """Incremental adds leave small blocks; publishing merges them (deleted rows dropped) and
    the merged index answers as the unmerged one did, within the quantisation bound."""
    from indexer import filters as wf

    ids, rows, queries = corpus
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 2500
    for start in range(0, 3000, 300):  # ten adds of 300 images: ten small blocks
        index.add(ids[start : start + 300], rows[start : start + 300])
        index.build()
    assert len(index._snap.blocks) == 10
    assert index.delete(ids[10:20] + ids[600:900]) == 310  # one block left with no live image
    before = [index.search(queries[n], 10) for n in range(20)]
    having = wf.WordFilter(require=[int(rows[0].indices[np.argmax(rows[0].data)])])
    filtered = index.search(queries[0], 50, filters=having)
    opened = open_index(publish(index, tmp_path / "index"))
    assert opened.count() == 3000 - 310
    # blocks 0-8 (2,390 live rows) fill one block, in order, dead rows dropped; 9 did not fit
    assert [b.rows for b in opened._snap.blocks] == [2390, 300]
    exact = rows.toarray().astype(np.float64)
    for n in range(20):
        after = opened.search(queries[n], 10)
        bound = opened.error_bound(queries[n])
        scores = exact @ queries[n].toarray().ravel()
        for image_id, score in after:
            assert abs(score - scores[ids.index(image_id)]) <= bound
        overlap = {i for i, _ in after} & {i for i, _ in before[n]}
        assert len(overlap) >= 9
    assert {i for i, _ in opened.search(queries[0], 50, filters=having)} == {i for i, _ in filtered}
    with pytest.raises(KeyError):
        opened.vectors_of([ids[650]])
    np.testing.assert_allclose(
        opened.vectors_of([ids[2000]]).toarray(), rows[2000].toarray(), atol=max(opened._errors)
    )


def test_an_index_of_another_block_layout_is_refused(tmp_path, corpus):
    ids, rows, _ = corpus
    index = CompactIndex.create(V)
    index.add(ids[:100], rows[:100])
    manifest = publish(index, tmp_path / "index") / "index.json"
    meta = json.loads(manifest.read_text())
    del meta["params"]["layout"]  # as written before byte-gap segments
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"block layout 1.*lexvla index reindex"):
        open_index(tmp_path / "index")


def test_saved_pruning_settings_old_and_unknown(tmp_path, corpus):
    """An index saved before the long-query falloff opens with its defaults; one saved by a
    later version with settings this one lacks is refused with a message, not a TypeError."""
    ids, rows, _ = corpus
    index = CompactIndex.create(V, pruning=ImpactPruning(budget=0.2))
    index.add(ids[:100], rows[:100])
    manifest = publish(index, tmp_path / "index") / "index.json"
    meta = json.loads(manifest.read_text())
    for field in ("long_words", "falloff"):
        del meta["params"]["pruning"][field]
    manifest.write_text(json.dumps(meta))
    assert open_index(tmp_path / "index").pruning == ImpactPruning(budget=0.2)
    meta["params"]["pruning"]["stop_early"] = True
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not know \(stop_early\).*upgrade lexvla"):
        open_index(tmp_path / "index")


def test_two_processes_share_one_mapped_index(tmp_path, corpus, pair):
    _, _, queries = corpus
    compact, _ = pair
    path = publish(compact, tmp_path / "index")
    sp.save_npz(tmp_path / "q.npz", queries[:5])
    script = (
        "import json, sys, scipy.sparse as sp\n"
        "from indexer.engines import open_index\n"
        f"index = open_index({str(path)!r})\n"
        f"qs = sp.load_npz({str(tmp_path / 'q.npz')!r})\n"
        "print(json.dumps([index.search(qs[i], 10) for i in range(qs.shape[0])]))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    expected = [[list(h) for h in compact.search(queries[i], 10)] for i in range(5)]
    assert outputs[0] == outputs[1] == expected


def test_searches_run_while_images_are_added_and_deleted(corpus):
    ids, rows, queries = corpus
    index = CompactIndex.create(V, pruning=None, threads=2)
    index.block_rows = 1000
    index.add(ids[:2000], rows[:2000])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hit_id, _ in index.search(queries[1], 10):
                    assert hit_id in ids
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for start in range(2000, 4000, 250):
        index.add(ids[start : start + 250], rows[start : start + 250])
        index.delete(ids[start - 2000 : start - 1900])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert index.count() == 4000 - 8 * 100


def test_spilled_build_holds_blocks_on_disk(tmp_path, corpus):
    ids, rows, _queries = corpus
    index = CompactIndex.create(V, pruning=None, spill_dir=tmp_path / "spill")
    index.block_rows = 2000
    index.add(ids, rows)
    index.build()
    assert all(isinstance(b.post.base, np.memmap) for b in index._snap.blocks)
    saved = tmp_path / "saved"
    index.save(saved)
    (spilled,) = (tmp_path / "spill").iterdir()  # a fresh folder of this build's own
    assert (
        os.stat(saved / "blocks/b000000/post.npy").st_ino
        == os.stat(spilled / "s000000/post.npy").st_ino
    )
    # a second build spilling into the same folder never writes over the first one's blocks
    before = index.search(rows[0], 5, pruning=None)
    other = CompactIndex.create(V, pruning=None, spill_dir=tmp_path / "spill")
    other.block_rows = 2000
    other.add(ids, rows[::-1])  # other rows under the same ids
    other.build()
    assert CompactIndex.open(saved).search(rows[0], 5, pruning=None) == before
    (saved / "blocks/b000000/post.npy").unlink()
    with pytest.raises(ValueError, match="not a complete compact block"):
        CompactIndex.open(saved)


def test_balanced_blocks():
    assert balanced_block_rows(None) == 65536
    assert balanced_block_rows(20_000) == 65536  # one block
    assert balanced_block_rows(100_000) == 50_000  # 2 even blocks, not 65,536 + 34,464
    assert balanced_block_rows(1_000_000) == 62_500  # 16 blocks


def test_vectors_of_across_blocks_keeps_the_asked_order(corpus, pair):
    """Rows from several blocks, shuffled and repeated, come back in the order asked, each the
    float row within half a quantisation step, with sorted word ids (re-scoring reads them)."""
    ids, rows, _ = corpus
    compact, _ = pair
    assert len(compact._snapshot().blocks) >= 3
    pick = [5999, 3, 2600, 3, 5100, 1200, 0]
    back = compact.vectors_of([ids[i] for i in pick])
    assert back.has_sorted_indices
    scale = compact._snapshot().scales.max()
    dense = rows[pick].toarray()
    assert np.abs(back.toarray() - dense).max() <= scale / 2 + 1e-7
    assert (back.getnnz(axis=1) <= rows[pick].getnnz(axis=1)).all()


def test_rows_of_a_page_just_searched_equal_rows_looked_up(corpus):
    """The rows of the hits a thread just got skip the id lookup: the same rows as a lookup in
    another thread, in the order asked; an id deleted since raises as before."""
    ids, rows, queries = corpus
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 2500
    index.add(ids[:3000], rows[:3000])
    page = [i for i, _ in index.search(queries[1], 8)]
    assert index._recent.page[1].keys() == set(page)  # the fast path is the one taken
    asked = page[::-1] + page[:2]
    fast = index.vectors_of(asked).toarray()
    looked_up: list[np.ndarray] = []
    other = threading.Thread(target=lambda: looked_up.append(index.vectors_of(asked).toarray()))
    other.start()
    other.join()
    assert np.array_equal(fast, looked_up[0])
    scale = index._snapshot().scales.max()
    assert np.abs(fast - rows[[ids.index(i) for i in asked]].toarray()).max() <= scale / 2 + 1e-7
    index.delete([page[0]])
    with pytest.raises(KeyError, match=page[0]):
        index.vectors_of(page)


def test_search_kernels_release_the_gil():
    """The service's event loop answers (429s, health) while searches run only if every kernel
    a search calls runs without the GIL: a kernel compiled without ``nogil`` would serialise
    the search threads and the event loop behind it."""
    called = [
        (impact_kernels, "plan_threshold"), (impact_kernels, "score_block"),
        (impact_kernels, "rescore"), (block_kernels, "decode_rows"),
        (block_kernels, "build_block"), (block_kernels, "pack_segments"),
    ]  # fmt: skip
    for module, name in called:
        kernel = getattr(module, name)
        assert kernel.targetoptions.get("nogil") is True, name


def test_prefetch_emits_the_instruction_and_changes_nothing():
    """The kernels' prefetch is a hand-written intrinsic: it must compile to a real prefetch
    (else it is silently a no-op), never fault past an array's end, and leave results as they
    are."""
    import numba as nb

    from indexer.engines.prefetch import prefetch

    @nb.njit(nogil=True)
    def summed(a):  # pragma: no cover - compiled
        s = 0
        for i in range(len(a)):
            prefetch(a, i + 4096)  # far past the end: a hint, not a load
            s += a[i]
        return s

    a = np.arange(1000, dtype=np.int64)
    assert summed(a) == a.sum()
    if os.uname().machine == "x86_64":
        assembly = summed.inspect_asm(summed.signatures[0])
        assert "prefetcht0" in assembly
