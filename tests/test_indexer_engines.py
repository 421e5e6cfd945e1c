"""indexer.engines: memory engine vs brute force, versions, Lucene vs memory, JSONL export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.engines import open_index, publish
from indexer.engines.base import IndexManifest, as_query_row
from indexer.engines.memory import index as memory_module
from indexer.engines.memory.index import MemoryIndex, Pruning
from indexer.engines.versions import CURRENT, current_version, list_versions, prune
from indexer.export import write_jsonl
from model.vocabulary import Vocabulary, VocabularyMismatchError

V = 2000


def zipf_rows(n: int, active: int, seed: int) -> sp.csr_matrix:
    """Unit rows with ``active`` words each, drawn with Zipf word frequencies, continuous weights."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(V) + 5.0)
    p /= p.sum()
    rows = np.zeros((n, V), dtype=np.float32)
    for r in range(n):
        words = rng.choice(V, size=active, replace=False, p=p)
        rows[r, words] = rng.lognormal(-3.0, 0.8, size=active)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return sp.csr_matrix(rows)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], sp.csr_matrix, sp.csr_matrix]:
    rows = zipf_rows(3000, 120, seed=0)
    queries = sp.vstack([zipf_rows(40, 30, seed=1), zipf_rows(40, 90, seed=2)], format="csr")
    return [f"img-{i:05d}" for i in range(rows.shape[0])], rows, queries


def brute_force(rows: sp.csr_matrix, ids: list[str], q: sp.csr_matrix, k: int, offset: int = 0):
    scores = rows.toarray().astype(np.float64) @ q.toarray().ravel().astype(np.float64)
    order = [r for r in np.lexsort((np.arange(len(scores)), -scores)) if scores[r] > 0]
    return [(ids[r], scores[r]) for r in order[offset : offset + k]]


def assert_same_hits(found, expected, rtol=1e-5):
    assert [i for i, _ in found] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], rtol=rtol)


def test_memory_engine_equals_brute_force(data):
    ids, rows, queries = data
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    for n in range(queries.shape[0]):
        q = queries[n]
        assert_same_hits(index.search(q, 10), brute_force(rows, ids, q, 10))
    q = queries[3]
    assert_same_hits(index.search(q, 5, offset=5), brute_force(rows, ids, q, 5, 5))
    assert len(index.search_batch(queries[:4], 3)) == 4
    np.testing.assert_array_equal(
        index.vectors_of([ids[7], ids[2]]).toarray(), rows[[7, 2]].toarray()
    )
    assert index.count() == 3000


def test_reading_vectors_after_a_search_copies_nothing(data):
    """Regression: an empty pending delta once made every vectors_of() re-stack the index."""
    ids, rows, queries = data
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    index.build()  # as an index opened from disk: everything in the forward index
    index.search(queries[0], 10)
    index.vectors_of([ids[0]])
    assert index._all_rows() is index._forward
    np.testing.assert_array_equal(index.vectors_of([ids[5]]).toarray(), rows[[5]].toarray())


def test_inverted_lists_are_impact_sorted_and_stay_so(data):
    ids, rows, queries = data
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    index.build()
    index.search(queries[0], 10)
    inv = index._inverted
    for w in (0, 1, 50):
        lst = inv.data[inv.indptr[w] : inv.indptr[w + 1]]
        assert len(lst) > 10 and np.all(np.diff(lst) <= 0)


def test_incremental_adds_deletes_and_delta_folding(data, monkeypatch):
    ids, rows, queries = data
    monkeypatch.setattr(memory_module, "_MIN_DELTA", 100)
    index = MemoryIndex.create(V)
    index.add(ids[:2000], rows[:2000])
    index.search(queries[0], 10)  # builds the inverted index for 2000 rows
    index.add(ids[2000:2100], rows[2000:2100])  # a small delta, scored by brute force
    q = queries[5]
    assert_same_hits(index.search(q, 10), brute_force(rows[:2100], ids[:2100], q, 10))
    index.add(ids[2100:], rows[2100:])  # large delta: folded at the next search
    assert_same_hits(index.search(q, 10), brute_force(rows, ids, q, 10))
    assert index._forward.shape[0] == 3000

    top = [i for i, _ in index.search(q, 10)]
    assert index.delete([top[0], top[3], "unknown"]) == 2 and index.count() == 2998
    alive = [n for n, i in enumerate(ids) if i not in (top[0], top[3])]
    expected = brute_force(rows[alive], [ids[n] for n in alive], q, 10)
    assert_same_hits(index.search(q, 10), expected)
    with pytest.raises(KeyError):
        index.vectors_of([top[0]])
    with pytest.raises(ValueError, match="already in the index"):
        index.add([top[1]], rows[:1])
    index.add([top[0]], rows[ids.index(top[0])])  # a deleted id may come back
    assert index.search(q, 1)[0][0] == top[0]


def test_pruned_search_scores_are_exact_and_recall_is_high(data):
    ids, rows, queries = data
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    everything = Pruning(candidates=10_000, posting_budget=None)
    recalls = []
    for n in range(queries.shape[0]):
        q = queries[n]
        exact = index.search(q, 10)
        assert_same_hits(index.search(q, 10, pruning=everything), exact)
        fixed = index.search(q, 10, pruning=Pruning(20, posting_depth=500, posting_budget=None))
        budget = Pruning(candidates=1000, posting_budget=3000)
        spent = index.search(q, 10, pruning=budget)
        for image_id, score in fixed + spent:  # pruning picks candidates; scores stay exact
            expected = rows[ids.index(image_id)].toarray().ravel() @ q.toarray().ravel()
            assert score == pytest.approx(expected, rel=1e-5)
        recalls.append(
            [len({i for i, _ in r} & {i for i, _ in exact}) / 10 for r in (fixed, spent)]
        )
    assert np.mean(recalls, axis=0).min() >= 0.9


def test_memory_save_open_drops_deleted_rows(tmp_path, data):
    ids, rows, queries = data
    index = MemoryIndex.create(V, vocabulary_hash="h" * 64, checkpoint_id="ck", threshold=0.02)
    index.add(ids[:500], rows[:500])
    index.delete([ids[0]])
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert manifest["engine"] == "memory" and manifest["count"] == 499
    assert manifest["checkpoint_id"] == "ck" and manifest["threshold"] == 0.02
    for mmap in (False, True):
        reopened = MemoryIndex.open(tmp_path / "ix", mmap=mmap)
        assert reopened.count() == 499
        q = queries[1]
        expected = brute_force(rows[1:500], ids[1:500], q, 10)
        assert_same_hits(reopened.search(q, 10), expected)


def test_versions_swap_atomically(tmp_path, data):
    ids, rows, queries = data
    root = tmp_path / "index"
    first = MemoryIndex.create(V, vocabulary_hash="a" * 64)
    first.add(ids[:100], rows[:100])
    assert publish(first, root).name == "v0001"
    reader = open_index(root)  # a reader holding v0001
    second = MemoryIndex.create(V, vocabulary_hash="a" * 64)
    second.add(ids[:200], rows[:200])
    (root / "versions" / ".tmp-v0002-999999999").mkdir()  # debris of a crashed publish
    assert publish(second, root).name == "v0002"
    assert (root / CURRENT).read_text().strip() == "v0002"
    assert list_versions(root) == ["v0001", "v0002"] and current_version(root).name == "v0002"
    assert open_index(root).count() == 200 and reader.count() == 100
    assert reader.search(queries[0], 3)  # the old version still serves its reader
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"):
        open_index(root, vocabulary_hash="b" * 64)
    assert prune(root, keep=1) == ["v0001"] and list_versions(root) == ["v0002"]
    assert not (root / "versions" / ".tmp-v0002-999999999").exists()
    (root / CURRENT).write_text("garbage\n")
    with pytest.raises(ValueError, match="corrupt"):
        open_index(root)


def test_manifest_and_query_helpers(tmp_path):
    m = IndexManifest("memory", "x" * 64, V, quantisation_scale=None)
    m.save(tmp_path)
    assert IndexManifest.load(tmp_path) == m
    q = as_query_row({3: 0.5, 10: 0.25}, V)
    assert q.shape == (1, V) and q[0, 3] == 0.5 and q.nnz == 2
    with pytest.raises(ValueError, match="shape"):
        as_query_row(np.ones(V + 1), V)


def test_export_jsonl_words_indices_and_impacts():
    vocab = Vocabulary.from_pieces(["<s>", "▁dog", "dog", "▁red"])  # words: dog, ·dog, red
    rows = sp.csr_matrix(np.array([[0.5, 0.25, 0.0], [0.0, 0.001, 0.75]], dtype=np.float32))
    out = io.StringIO()
    assert write_jsonl(out, [(["a", "b"], rows)], vocab) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"id": "a", "vector": {"dog": 0.5, "·dog": 0.25}}
    out = io.StringIO()
    write_jsonl(out, [(["a", "b"], rows)], vocab, keys="index", scale=100)
    assert json.loads(out.getvalue().splitlines()[1]) == {"id": "b", "vector": {"2": 75}}


# --- Lucene -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lucene_index(data, tmp_path_factory):
    from indexer.engines.lucene.jvm import LuceneUnavailable, java_class

    try:
        java_class("java.lang.String")
    except LuceneUnavailable as exc:
        pytest.skip(f"Lucene engine unavailable: {exc}")
    from indexer.engines.lucene.index import LuceneIndex

    ids, rows, _ = data
    index = LuceneIndex.create(V, vocabulary_hash="c" * 64)
    index.add(ids[:1500], rows[:1500])
    index.add(ids[1500:], rows[1500:])
    return index


def test_lucene_agrees_with_memory(data, lucene_index):
    ids, rows, queries = data
    memory = MemoryIndex.create(V)
    memory.add(ids, rows)
    same = 0
    batch = lucene_index.search_batch(queries, 10)
    for n in range(queries.shape[0]):
        exact = memory.search(queries[n], 10)
        found = lucene_index.search(queries[n], 10)
        assert found == batch[n]
        same += [i for i, _ in found] == [i for i, _ in exact]
        common = dict(exact)
        for image_id, score in found:  # rescored: exact float scores
            if image_id in common:
                assert score == pytest.approx(common[image_id], rel=1e-5)
    assert same / queries.shape[0] >= 0.99


def test_lucene_quantised_scores_and_paging(data, lucene_index):
    ids, rows, queries = data
    q = queries[0]
    exact = brute_force(rows, ids, q, 10)
    assert [i for i, _ in lucene_index.search(q, 5, offset=5)] == [i for i, _ in exact[5:10]]
    lucene_index.rescore = False
    try:
        raw = lucene_index.search(q, 10)
    finally:
        lucene_index.rescore = True
    for (_, quantised), (_, real) in zip(raw, exact, strict=False):
        assert quantised == pytest.approx(real, rel=0.05)


def test_lucene_delete_save_open(tmp_path, data, lucene_index):
    ids, rows, queries = data
    from indexer.engines.lucene.index import LuceneIndex

    q = queries[2]
    top = lucene_index.search(q, 3)
    publish(lucene_index, tmp_path / "lx")
    assert lucene_index.delete([top[0][0], "unknown"]) == 1
    assert lucene_index.count() == 2999
    assert top[0][0] not in {i for i, _ in lucene_index.search(q, 10)}
    version = publish(lucene_index, tmp_path / "lx")
    old = LuceneIndex.open(tmp_path / "lx" / "versions" / "v0001")
    assert old.count() == 3000 and old.search(q, 1)[0][0] == top[0][0]
    new = open_index(tmp_path / "lx")
    assert version.name == "v0002" and new.count() == 2999
    assert [i for i, _ in new.search(q, 2)] == [i for i, _ in lucene_index.search(q, 2)]
    np.testing.assert_array_equal(new.vectors_of([ids[9]]).toarray(), rows[9].toarray())
    new.add(["extra"], rows[0])  # copy-on-write: the published version is not modified
    assert new.count() == 3000 and open_index(tmp_path / "lx").count() == 2999
    assert not list(Path.cwd().glob("segments_*"))  # nothing written outside its directories


def test_lucene_filters_equal_brute_force(data, lucene_index, monkeypatch):
    from test_indexer_filters import oracle_search

    from indexer import filters as wf
    from indexer.engines.lucene import index as lucene_module

    ids, rows, queries = data
    counts = np.bincount(wf.has_matrix(rows).indices, minlength=V)
    common = [int(w) for w in np.argsort(-counts)[:3]]
    rare = int(np.flatnonzero((counts > 0) & (counts < 10))[0])
    cases = [
        wf.WordFilter(exclude=frozenset(common[:2])),
        wf.WordFilter(require=frozenset(common[:1])),
        wf.WordFilter(require=frozenset({rare})),
        wf.WordFilter(require=frozenset(common[1:2]), exclude=frozenset(common[2:3])),
    ]
    for limit in (lucene_module._FILTER_EXACT, 0):  # direct scoring, then Lucene deepening
        monkeypatch.setattr(lucene_module, "_FILTER_EXACT", limit)
        for f in cases:
            for n in (0, 7, 45):
                expected = oracle_search(rows, ids, queries[n], 10, 0, f)
                found = lucene_index.search(queries[n], 10, filters=f)
                assert [i for i, _ in found] == [i for i, _ in expected]
                np.testing.assert_allclose(
                    [s for _, s in found], [s for _, s in expected], rtol=1e-5
                )
    assert not lucene_index.exact and lucene_index.exact_rows
