"""indexer.engines.compact.index: the quantised impact index against the exact memory engine
(scores, pruning, writes, concurrency, kernels). Its files on disk: test_indexer_compact_files.py."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from compact_fixtures import V

from indexer import scoring
from indexer.engines.compact import block_kernels, impact_kernels, search
from indexer.engines.compact.block import balanced_block_rows, encode_ids
from indexer.engines.compact.index import CompactIndex, ImpactPruning
from indexer.scoring_kernels import page_contributions

REPO = Path(__file__).resolve().parents[1]


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


def test_pruned_search_recall_and_exact_rescoring(corpus, pair, free_planning):
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


def test_the_plan_prunes_only_when_its_steps_cost_less_than_the_postings_it_skips(
    pair, corpus, monkeypatch, free_planning
):
    """Exact search is chosen exactly when the planned budget plus the pruned search's own
    steps (planning, keeping and re-scoring candidates, fixed work) reach the query's postings."""
    compact, _ = pair
    snap = compact._snapshot()
    pruning = ImpactPruning(budget=0.05, min_postings=0, candidates=100, per_word=0)
    chosen = set()
    for n in (0, 1, 2):
        q = corpus[2][n]
        total = int(snap.counts[q.indices].sum())
        budget = int(0.05 * total)
        for fixed in (0.0, 0.5 * total, total - budget - 1.0, float(total)):
            monkeypatch.setattr(search, "PRUNED_COST", fixed)
            overhead = search.pruned_overhead(len(q.indices), 100, snap.postings_per_row)
            threshold, capacity = compact._scorer.plan(snap, q.indices, q.data, pruning, 10)
            if budget + overhead >= total:
                assert (threshold, capacity) == (0.0, 10)
            else:
                assert threshold > 0 and capacity == 100
            chosen.add(threshold > 0)
        # the overhead counts every step: more candidates or words cost more
        more = search.pruned_overhead(len(q.indices), 200, snap.postings_per_row)
        assert more > search.pruned_overhead(len(q.indices), 100, snap.postings_per_row)
    assert chosen == {True, False}  # both decisions were taken


def test_long_queries_read_a_smaller_share_of_their_postings(pair, free_planning):
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
    # exactly each block's own forward row, dequantised with that block's scale
    snap = compact._snapshot()
    for n, image_id in enumerate(ids[i] for i in pick):
        b, row = next(
            (b, int(r[0])) for b, blk in enumerate(snap.blocks)
            if (r := blk.find(encode_ids([image_id])))[0] >= 0
        )  # fmt: skip
        _, words, codes = snap.blocks[b].decode(np.array([row]))
        got = back[n]
        assert np.array_equal(got.indices, words)
        assert np.array_equal(got.data, (codes * snap.scales[b]).astype(np.float32))


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


def _compiled_kernels() -> dict[str, object]:
    """Every numba-compiled function in the packages: each module whose source uses numba is
    imported and its dispatchers (``njit``/``jit`` results) collected by qualified name."""
    import importlib

    from numba.core.dispatcher import Dispatcher

    kernels: dict[str, object] = {}
    for package in ("model", "training", "indexer", "service", "lexvla"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "numba" not in path.read_text():
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            module = importlib.import_module(name)
            for attr, value in vars(module).items():
                if isinstance(value, Dispatcher) and value.__module__ == name:
                    kernels[f"{name}.{attr}"] = value
    return kernels


def test_every_compiled_kernel_releases_the_gil():
    """The service's event loop answers (429s, health) while searches run only if every kernel
    a search calls runs without the GIL: a kernel compiled without ``nogil`` would serialise
    the search threads and the event loop behind it. Kernels are found, not listed."""
    kernels = _compiled_kernels()
    for known in (impact_kernels.score_block, block_kernels.decode_rows, page_contributions):
        assert f"{known.__module__}.{known.__name__}" in kernels  # the discovery finds them
    holding = [name for name, k in kernels.items() if k.targetoptions.get("nogil") is not True]
    assert holding == []


def test_prefetch_emits_the_instruction_and_changes_nothing():
    """The kernels' prefetch is a hand-written intrinsic: it must compile to a real prefetch
    (else it is silently a no-op), never fault past an array's end, and leave results as they
    are."""
    import numba as nb

    from indexer.engines.compact.prefetch import prefetch

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


def test_rescoring_fetches_only_the_candidates_that_can_reach_the_page(corpus, pair):
    """Served search re-scores the compact engine's candidates from float rows; candidates
    more than twice the quantisation bound below the page's last are not fetched, and the
    page is the same as when every candidate is re-scored."""
    ids, rows, queries = corpus
    compact, _ = pair
    from model.vocabulary import Vocabulary

    vocabulary = Vocabulary(
        list(range(V)), [f"▁w{'abcdefghij'[i % 10]}{i // 10}" for i in range(V)]
    )
    position = {image_id: n for n, image_id in enumerate(ids)}

    class FloatRows:  # a corpus store's vectors_of over the float rows, counting the rows asked
        asked = 0

        def vectors_of(self, wanted):
            FloatRows.asked += len(wanted)
            return rows[[position[i] for i in wanted]]

    class Unbounded:  # the engine without its bound: every candidate is re-scored
        def __init__(self, index):
            self._index = index

        def score_error(self, query):
            return None  # unknown

        def __getattr__(self, name):
            return getattr(self._index, name)

    store = FloatRows()
    fetched = {}
    for engine in (compact, Unbounded(compact)):
        FloatRows.asked = 0
        pages = [
            scoring.search(engine, store, vocabulary, queries[n], exact=False, top_k=10)
            for n in range(queries.shape[0])
        ]
        fetched[type(engine).__name__] = FloatRows.asked
        if engine is compact:
            cut = pages
    assert [[(h.id, h.score) for h in p.hits] for p in pages] == [
        [(h.id, h.score) for h in p.hits] for p in cut
    ]
    assert fetched["CompactIndex"] < fetched["Unbounded"] == 40 * queries.shape[0]
    truth = rows.toarray().astype(np.float64) @ queries.toarray().T.astype(np.float64)
    for n, page in enumerate(cut):  # and the page is the float top 10
        order = np.argsort(-truth[:, n], kind="stable")[:10]
        assert {h.id for h in page.hits} == {ids[i] for i in order}
