"""indexer.filters: the "image has word" rule, and filtered search in the memory engine vs brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexer import filters as wf
from indexer.engines.memory import index as memory_module
from indexer.engines.memory.index import MemoryIndex, Pruning
from indexer.filters import WordFilter

V = 400


def corpus(n: int, seed: int) -> sp.csr_matrix:
    """Rows with 20-90 active words; some rows flat (many words near the max), some empty."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, V), dtype=np.float32)
    for r in range(n):
        words = rng.choice(V, size=rng.integers(20, 90), replace=False, p=_zipf())
        if r % 7 == 0:  # flat: more than STRONG_TOP words above the fraction
            dense[r, words] = rng.uniform(0.9, 1.0, size=len(words))
        elif r % 11 != 5:  # (r % 11 == 5: an empty row)
            dense[r, words] = rng.lognormal(-3.0, 0.9, size=len(words))
    return sp.csr_matrix(dense)


def _zipf() -> np.ndarray:
    p = 1.0 / (np.arange(V) + 3.0)
    return p / p.sum()


def oracle_words(rows: sp.csr_matrix) -> list[set[int]]:
    """The rule written out per row in plain Python: sorted weights, the cut, the words."""
    out = []
    for r in range(rows.shape[0]):
        a, b = rows.indptr[r], rows.indptr[r + 1]
        pairs = sorted(
            zip(rows.data[a:b].tolist(), rows.indices[a:b].tolist(), strict=True), reverse=True
        )
        if not pairs:
            out.append(set())
            continue
        top = float(np.float32(wf.STRONG_FRACTION) * np.float32(pairs[0][0]))
        nth = pairs[min(wf.STRONG_TOP, len(pairs)) - 1][0]
        cut = max(top, nth)
        out.append({w for d, w in pairs if d >= cut})
    return out


def oracle_search(rows, ids, q, k, offset=0, filters=None):
    words = oracle_words(rows)
    scores = rows.toarray().astype(np.float64) @ q.toarray().ravel().astype(np.float64)
    order = [
        r
        for r in np.lexsort((np.arange(len(scores)), -scores))
        if scores[r] > 0 and (filters is None or filters.allows(words[r]))
    ]
    return [(ids[r], scores[r]) for r in order[offset : offset + k]]


@pytest.fixture(scope="module")
def data():
    rows = corpus(900, seed=0)
    queries = corpus(30, seed=1)
    queries = queries[np.diff(queries.indptr) > 0]
    return [f"i{n:04d}" for n in range(rows.shape[0])], rows, queries


def filters_for(rows: sp.csr_matrix) -> list[WordFilter]:
    """Filters over common and rare strong words: exclusions, requirements, both."""
    counts = np.bincount(wf.has_matrix(rows).indices, minlength=V)
    common = [int(w) for w in np.argsort(-counts)[:4]]
    rare = [int(w) for w in np.flatnonzero((counts > 0) & (counts < 15))[:3]]
    return [
        WordFilter(exclude=frozenset(common[:1])),
        WordFilter(exclude=frozenset(common[:3])),
        WordFilter(require=frozenset(common[:1])),
        WordFilter(require=frozenset(common[:2])),
        WordFilter(require=frozenset(rare[:1])),
        WordFilter(require=frozenset(common[1:2]), exclude=frozenset(common[2:3] + rare[1:2])),
        WordFilter(),
    ]


def test_rule_vectorised_equals_the_rule_per_row(data):
    _, rows, _ = data
    expected = oracle_words(rows)
    has = wf.has_matrix(rows)
    for r in range(rows.shape[0]):
        got = set(has.indices[has.indptr[r] : has.indptr[r + 1]].tolist())
        a, b = rows.indptr[r], rows.indptr[r + 1]
        assert got == expected[r] == set(wf.strong_words(rows.indices[a:b], rows.data[a:b]))
    lengths = [len(w) for w in expected]
    assert max(lengths) == wf.STRONG_TOP  # flat rows are capped
    assert min(lengths) == 0 and sum(lengths) > 0  # empty rows have no word


def test_rule_is_relative_to_the_image_maximum():
    row = np.array([1.0, 0.36, 0.34, 0.2], dtype=np.float32)
    assert wf.STRONG_FRACTION == 0.35
    assert wf.strong_words(np.arange(4), row).tolist() == [0, 1]
    assert wf.strong_words(np.arange(4), row * 0.01).tolist() == [0, 1]  # scale-free
    assert wf.strong_words(np.arange(4), np.zeros(0, np.float32)).tolist() == []
    cuts = wf.strong_cuts(sp.csr_matrix(np.vstack([row, np.zeros(4, np.float32)])))
    assert cuts[0] == pytest.approx(0.35) and np.isinf(cuts[1])


def test_strong_cuts_in_chunks_equal_one_pass(data, monkeypatch):
    _, rows, _ = data
    whole = wf.strong_cuts(rows)
    monkeypatch.setattr(wf, "_CHUNK_ENTRIES", 97)
    np.testing.assert_array_equal(wf.strong_cuts(rows), whole)


def test_word_filter_checks_its_words():
    with pytest.raises(ValueError, match="both required and excluded"):
        WordFilter(require=frozenset({3}), exclude=frozenset({3, 4}))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        WordFilter(require=frozenset({V})).check(V)
    f = WordFilter(require=frozenset({1, 2}), exclude=frozenset({9}))
    assert f.allows({1, 2, 5}) and not f.allows({1}) and not f.allows({1, 2, 9})
    assert WordFilter().empty and not wf.active(WordFilter()) and not wf.active(None)
    with pytest.raises(ValueError, match="computed with rule"):
        wf.check_rule({"rule": {"fraction": 0.5, "top": 32}}, "index x")
    wf.check_rule({"rule": dict(wf.RULE)}, "index x")


def test_allowed_rows_is_the_oracle(data):
    _, rows, _ = data
    words = oracle_words(rows)
    for f in filters_for(rows):
        expected = np.array([f.allows(w) for w in words])
        np.testing.assert_array_equal(wf.allowed_rows(f, rows), expected)


def assert_same(found, expected):
    assert [i for i, _ in found] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], rtol=1e-5)


def test_memory_engine_filters_equal_brute_force(data, monkeypatch):
    ids, rows, queries = data
    monkeypatch.setattr(memory_module, "_MIN_DELTA", 50)
    index = MemoryIndex.create(V)
    index.add(ids[:700], rows[:700])
    index.build()
    index.add(ids[700:], rows[700:])  # 200 rows in the delta, tested on their own rows
    assert index.exact and index.exact_rows
    for f in filters_for(rows):
        for n in range(0, queries.shape[0], 3):
            q = queries[n]
            assert_same(index.search(q, 10, filters=f), oracle_search(rows, ids, q, 10, 0, f))
        q = queries[1]
        assert_same(index.search(q, 4, 3, f), oracle_search(rows, ids, q, 4, 3, f))
        batch = index.search_batch(queries[:3], 5, 0, f)
        assert batch == [index.search(queries[i], 5, 0, f) for i in range(3)]
    # pruned search draws its candidates from allowed images only
    f = filters_for(rows)[4]
    pruned = index.search(queries[0], 10, filters=f, pruning=Pruning(8, 20, 50, None))
    assert pruned and all(f.allows(oracle_words(rows[[ids.index(i)]])[0]) for i, _ in pruned)


def test_memory_filters_after_delete_compact_and_reopen(tmp_path, data):
    ids, rows, queries = data
    f = filters_for(rows)[2]
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    q = queries[2]
    top = index.search(q, 3, filters=f)
    index.delete([top[0][0]])
    alive = [n for n, i in enumerate(ids) if i != top[0][0]]
    sub_rows, sub_ids = rows[alive], [ids[n] for n in alive]
    assert_same(index.search(q, 10, filters=f), oracle_search(sub_rows, sub_ids, q, 10, 0, f))
    index.save(tmp_path / "ix")
    reopened = MemoryIndex.open(tmp_path / "ix", mmap=True)
    assert_same(reopened.search(q, 10, filters=f), oracle_search(sub_rows, sub_ids, q, 10, 0, f))


def test_compact_engine_filters_equal_its_unfiltered_ranking(tmp_path, data):
    """The compact engine's filtered top-k is its own full ranking (quantised scores) with the
    images the rule excludes taken out, in every block, exact and pruned, after a reopen."""
    from indexer.engines.compact.index import CompactIndex, ImpactPruning

    ids, rows, queries = data
    words = oracle_words(rows)
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 400  # three blocks
    index.add(ids, rows)
    index.save(tmp_path / "compact")
    reopened = CompactIndex.open(tmp_path / "compact")
    for f in filters_for(rows):
        for n in range(0, queries.shape[0], 3):
            q = queries[n]
            everything = index.search(q, len(ids))
            allowed = [(i, s) for i, s in everything if f.allows(words[ids.index(i)])]
            assert index.search(q, 10, filters=f) == allowed[:10]
            assert reopened.search(q, 10, filters=f) == allowed[:10]
        assert index.search(queries[1], 4, 3, f) == index.search(queries[1], 7, 0, f)[3:]
    f = filters_for(rows)[4]
    pruning = ImpactPruning(budget=0.05, min_postings=0, candidates=20, per_word=0)
    pruned = index.search(queries[0], 10, filters=f, pruning=pruning)
    assert pruned and all(f.allows(words[ids.index(i)]) for i, _ in pruned)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        index.search(queries[0], 10, filters=WordFilter(exclude=frozenset({V + 5})))
