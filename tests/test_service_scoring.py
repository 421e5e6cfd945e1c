"""Scoring and query edits on their own, approximate engines re-scored exactly, the Lucene engine."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.engines.base import IndexManifest, SearchIndex
from indexer.engines.memory.index import MemoryIndex, Pruning
from indexer.scoring import scored_hit, scored_hits
from indexer.scoring_kernels import row_scores
from model.vocabulary import Vocabulary
from service.core.errors import InvalidInput
from service.search import heatmap, served
from service.search.indexes import IndexHandle
from service.search.query import apply_edits, resolve_edits, row_from_weights, split_filters

PIECES = ["<unk>", "▁dog", "▁cat", "▁red", "▁blue", "▁car", "dog", "▁tree"]


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_pieces(PIECES)


@pytest.mark.parametrize(
    ("text", "clean", "required", "excluded"),
    [
        ("dog -cat", "dog", [], ["cat"]),
        ("-red dog  -blue car", "dog car", [], ["red", "blue"]),
        ("t-shirt - dog", "t-shirt - dog", [], []),  # only a '-' starting a token excludes
        ("  dog  ", "dog", [], []),
        ("dog +grass -cat", "dog", ["grass"], ["cat"]),
        ("c++ + dog +red", "c++ + dog", ["red"], []),
        ("+circle", "", ["circle"], []),
    ],
)
def test_inline_filters(text, clean, required, excluded):
    assert split_filters(text) == (clean, required, excluded)


def test_filters_resolve_to_a_word_filter(vocab):
    edits = resolve_edits(vocab, ["cat"], inline_exclude=["cat", "car"], require=["dog"])
    f = edits.filters
    assert f is not None and f.require == {vocab.index("dog")}
    assert f.exclude == {vocab.index("cat"), vocab.index("car")}
    assert resolve_edits(vocab, boost={"dog": 0.0}).filters is None  # boost 0: no filter
    with pytest.raises(InvalidInput, match="both required and excluded"):
        resolve_edits(vocab, ["dog"], inline_require=["dog"])
    with pytest.raises(InvalidInput, match="unknown word 'zebra' in the query's \\+requirements"):
        resolve_edits(vocab, inline_require=["zebra"])


def test_edits_boost_then_exclude(vocab):
    row = row_from_weights({vocab.index("dog"): 0.6, vocab.index("cat"): 0.2}, len(vocab))
    edits = resolve_edits(vocab, ["cat"], {"dog": 2.0, "red": 0.5, "cat": 3.0})
    out = apply_edits(row, edits)
    edited = {vocab.words[i]: w for i, w in zip(out.indices, out.data, strict=True)}
    assert edited == pytest.approx({"dog": 1.2, "red": 0.5 * 0.4})  # cat excluded despite a boost
    zero = apply_edits(row, resolve_edits(vocab, boost={"dog": 0.0}))
    assert [vocab.words[i] for i in zero.indices] == ["cat"]
    with pytest.raises(InvalidInput, match="unknown word 'zebra' in exclude") as err:
        resolve_edits(vocab, ["dog", "zebra"])
    assert err.value.loc == ["body", "exclude", 1]
    assert vocab.index("·dog") != vocab.index("dog")  # continuation pieces are their own words


class ApproximateEngine(SearchIndex):
    """An engine whose scores are off (like Lucene's integer impacts) and holds no float rows."""

    exact = False
    exact_rows = False
    ranks_by_rows = False

    def __init__(self, oracle: MemoryIndex):
        self.oracle = oracle
        self.manifest = IndexManifest(
            "approx", oracle.manifest.vocabulary_hash, oracle.manifest.vocabulary_size
        )

    def search(self, query, k=10, offset=0, filters=None, *, where=None):
        hits = self.oracle.search(query, k + offset, 0, filters, where=where)
        noisy = [(i, round(s, 1)) for i, s in hits]  # coarse: ties and reorderings
        return sorted(noisy, key=lambda h: -h[1])[offset : offset + k]

    def vectors_of(self, ids):
        raise AssertionError("float rows must come from the corpus store")

    def count(self):
        return self.oracle.count()


@pytest.mark.parametrize("limit", [None, 0, 2, 3, 5, 100])
def test_a_hit_lists_its_heaviest_words_and_sums_the_rest(vocab, limit):
    """Score and matched words against a plain loop: contributions q_j * d_j, heaviest first,
    ties by word index; the score the smallest-first sum over every matched word wherever the
    list is cut, and the unlisted words counted and summed the same way."""
    q = np.array([0.0, 0.5, 0.0, 2.0, 1.0, 0.25, 0.5, 0.0])
    indices = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)  # word 2 is not in the query
    data = np.array([2.0, 9.0, 0.5, 1.0, 0.5, 2.0], dtype=np.float32)
    expected = sorted(
        ((int(j), float(q[j]) * float(d)) for j, d in zip(indices, data, strict=True) if q[j] > 0),
        key=lambda item: (-item[1], item[0]),
    )  # (1, 1.0), (3, 1.0), (4, 1.0), (6, 1.0), (5, 0.125)
    hit = scored_hit("img", q, indices, data, vocab, limit)
    listed = expected if limit is None else expected[:limit]
    rest = expected[len(listed) :]
    assert [(c.index, c.contribution) for c in hit.matched] == listed
    assert [c.word for c in hit.matched] == [vocab.words[j] for j, _ in listed]
    assert [c.query_weight * c.image_weight for c in hit.matched] == [v for _, v in listed]
    assert hit.score == sum(v for _, v in reversed(expected)) == 4.125
    assert (hit.other_words, hit.other_contribution) == (
        len(rest),
        sum(v for _, v in reversed(rest)),
    )


def test_a_row_without_matched_words_scores_zero(vocab):
    q = np.zeros(len(PIECES))
    hit = scored_hit("img", q, np.array([1, 2], dtype=np.int32), np.ones(2, np.float32), vocab, 1)
    assert (hit.score, hit.matched, hit.other_words, hit.other_contribution) == (0.0, [], 0, 0.0)


def test_approximate_candidates_are_rescored_exactly_from_the_store(tiny_model, service_corpus):
    from indexer.store import CorpusStore

    store = CorpusStore.open(service_corpus.store)
    ids, rows = store.vectors()
    exact = MemoryIndex.create(rows.shape[1], store.vocabulary.hash)
    exact.add(ids, rows)
    handle = IndexHandle(ApproximateEngine(exact), "approx")
    assert not handle.exact
    query = tiny_model.sparsify(tiny_model.encode_texts(["a green square"]))
    truth = np.asarray(rows.astype(np.float64) @ query.toarray().ravel())
    order = np.argsort(-truth, kind="stable")
    for offset in (0, 3):
        out = served.search_handle(
            handle, store, tiny_model.vocabulary, query, top_k=4, offset=offset, rescore_factor=4
        )
        assert [h.id for h in out.hits] == [ids[i] for i in order[offset : offset + 4]]
        for hit in out.hits:
            assert hit.score == pytest.approx(truth[ids.index(hit.id)], rel=1e-6)
            assert hit.score == pytest.approx(sum(c.contribution for c in hit.matched), rel=1e-12)
        assert out.candidates == min(4 * (offset + 4), len(ids))
    store.close()


def test_pruned_memory_search_reports_exact_scores(tiny_model, service_corpus):
    from indexer.store import CorpusStore

    with CorpusStore.open(service_corpus.store) as store:
        ids, rows = store.vectors()
    pruned = MemoryIndex.create(rows.shape[1], tiny_model.vocabulary.hash, pruning=Pruning(8, 4, 6))
    pruned.add(ids, rows)
    pruned.build()
    handle = IndexHandle(pruned, "pruned")
    query = tiny_model.sparsify(tiny_model.encode_texts(["a red square"]))
    out = served.search_handle(
        handle, None, tiny_model.vocabulary, query, top_k=3, matched_limit=None
    )
    truth = dict(
        zip(ids, np.asarray(rows.astype(np.float64) @ query.toarray().ravel()), strict=True)
    )
    assert [h.score for h in out.hits] == sorted((h.score for h in out.hits), reverse=True)
    for hit in out.hits:
        assert hit.score == pytest.approx(truth[hit.id], rel=1e-6)


def test_served_lucene_index_agrees_with_the_exact_scores(
    tiny_model, service_corpus, service_settings, tmp_path
):
    from fastapi.testclient import TestClient

    from indexer.build import build_index
    from indexer.engines.lucene.jvm import LuceneUnavailable, java_class
    from indexer.store import CorpusStore
    from service.main import create_app

    try:
        java_class("java.lang.String")
    except LuceneUnavailable as exc:
        pytest.skip(f"Lucene engine unavailable: {exc}")
    with CorpusStore.open(service_corpus.store) as store:
        build_index(store, tmp_path / "lucene", "lucene")
    settings = service_settings.model_copy(update={"index": tmp_path / "lucene"})
    with TestClient(create_app(settings, model=tiny_model)) as client:
        body = {"query": "a blue circle", "top_k": 5, "matched_limit": None}
        lucene = client.post("/search", json=body).json()
    memory = client_search(service_settings, tiny_model, body)
    assert [h["id"] for h in lucene["hits"]] == [h["id"] for h in memory["hits"]]
    for a, b in zip(lucene["hits"], memory["hits"], strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-9)
        assert a["score"] == pytest.approx(sum(m["contribution"] for m in a["matched"]), rel=1e-12)


def client_search(settings, model, body):
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app(settings, model=model)) as client:
        return client.post("/search", json=body).json()


def test_exact_scores_off_scores_from_the_engine_rows(tiny_model, service_corpus, service_settings):
    """LEXVLA_EXACT_SCORES=false: hits are scored from the compact engine's quantised rows (no
    store reads), within the engine's error bound of the float32 scores; /search and /explain
    agree, and every score is still the sum of its contributions."""
    from fastapi.testclient import TestClient

    from indexer.engines import open_index
    from service.main import create_app

    body = {"query": "a blue circle", "top_k": 5, "matched_limit": None}
    exact = client_search(service_settings, tiny_model, body)
    settings = service_settings.model_copy(update={"exact_scores": False})
    with TestClient(create_app(settings, model=tiny_model)) as client:
        quantised = client.post("/search", json=body).json()
        first = quantised["hits"][0]
        explained = client.post("/explain", json={"query": body["query"], "image_id": first["id"]})
        assert explained.status_code == 200, explained.text
    index = open_index(service_corpus.index)
    assert index.manifest.engine == "compact" and not index.exact_rows
    q = tiny_model.sparsify(tiny_model.encode_texts(["a blue circle"]))
    bound = index.error_bound(q)
    rows = index.vectors_of([h["id"] for h in quantised["hits"]])
    engine_scores = np.asarray(rows.astype(np.float64) @ q.toarray().astype(np.float64).T).ravel()
    by_id = {h["id"]: h["score"] for h in exact["hits"]}
    for hit, engine_score in zip(quantised["hits"], engine_scores, strict=True):
        assert hit["score"] == pytest.approx(engine_score, rel=1e-6)
        assert hit["score"] == pytest.approx(sum(m["contribution"] for m in hit["matched"]))
        if hit["id"] in by_id:
            assert abs(hit["score"] - by_id[hit["id"]]) <= bound
    assert any(h["score"] != by_id.get(h["id"]) for h in quantised["hits"])  # really the rows
    assert explained.json()["score"] == pytest.approx(first["score"], rel=1e-9)


def test_heat_map_colours_and_overlay():
    table = heatmap.colormap_table()
    luminance = table @ np.array([0.299, 0.587, 0.114])
    assert table.shape == (256, 3) and np.all(np.diff(luminance) > -1e-9)  # dark -> bright
    assert np.all(heatmap.normalise(np.full((4, 4), 0.3)) == 0)
    grid = np.zeros((16, 16))
    grid[:8, :8] = 1.0  # the word is in the top-left quarter
    from PIL import Image

    image = Image.new("RGB", (300, 200), (128, 128, 128))
    drawn = np.asarray(heatmap.overlay(image, grid, 224, size=64), dtype=np.float64)
    assert drawn.shape == (64, 64, 3)
    assert drawn[:24, :24].mean() > drawn[40:, 40:].mean() + 40  # bright where the word is


def test_rows_from_weights_drop_zeros():
    row = row_from_weights({3: 0.5, 1: 0.0, 2: 0.25}, 6)
    assert isinstance(row, sp.csr_matrix) and row.shape == (1, 6)
    assert row.indices.tolist() == [2, 3] and row.data.tolist() == [0.25, 0.5]


def test_a_page_of_hits_equals_each_hit_scored_alone(vocab):
    """scored_hits over a page: each row as a plain loop would score it, unsorted word ids and
    rows without a matched word included, every listing limit."""
    rng = np.random.default_rng(3)
    size = len(PIECES)
    q = np.where(rng.random(size) < 0.6, rng.random(size), 0.0)
    q[2] = 0.5  # a tie-maker: same contribution as word 3 below
    q[3] = 0.25
    rows = []
    for n in range(6):
        words = rng.permutation(size)[: rng.integers(0, size)]  # any order
        data = rng.random(len(words)).astype(np.float32)
        if n == 1:  # equal contributions: ties go by word index
            words, data = np.array([3, 2]), np.array([1.0, 0.5], dtype=np.float32)
        rows.append((words.astype(np.int32), data))
    indptr = np.cumsum([0] + [len(w) for w, _ in rows])
    page = sp.csr_matrix(
        (np.concatenate([d for _, d in rows]), np.concatenate([w for w, _ in rows]), indptr),
        shape=(len(rows), size),
    )
    ids = [f"img{n}" for n in range(len(rows))]
    for limit in (None, 0, 1, 3):
        hits = scored_hits(ids, q, page, vocab, limit)
        for hit, image_id, (words, data) in zip(hits, ids, rows, strict=True):
            expected = sorted(
                (
                    (int(j), float(q[j]) * float(d))
                    for j, d in zip(words, data, strict=True)
                    if q[j] > 0
                ),
                key=lambda item: (-item[1], item[0]),
            )
            listed = expected if limit is None else expected[:limit]
            rest = expected[len(listed) :]
            assert hit.id == image_id
            assert [(c.index, c.contribution) for c in hit.matched] == listed
            assert hit.score == sum(v for _, v in reversed(expected))
            assert hit.other_words == len(rest)
            assert hit.other_contribution == sum(v for _, v in reversed(rest))
    assert [(c.index, c.contribution) for c in scored_hits(ids, q, page, vocab)[1].matched] == [
        (2, 0.25),
        (3, 0.25),
    ]
    with pytest.raises(ValueError, match="2 ids for 6 rows"):
        scored_hits(ids[:2], q, page, vocab)
    with pytest.raises(ValueError, match="rows of 8 words for a query of 7"):
        scored_hits(ids, q[:7], page, vocab)


def test_candidate_scores_are_the_float64_dot_products_of_their_rows():
    """row_scores (what chooses the page among re-scored candidates) against scipy's float64
    product, rows in any word order, empty rows and a query with zero weights included."""
    rng = np.random.default_rng(5)
    rows = sp.random(30, 200, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    rows[4] = 0  # a row with no words
    rows.eliminate_zeros()
    shuffled = rows.copy()
    for n in range(rows.shape[0]):  # each row's words out of order
        a, b = shuffled.indptr[n], shuffled.indptr[n + 1]
        order = rng.permutation(b - a) + a
        shuffled.indices[a:b], shuffled.data[a:b] = rows.indices[order], rows.data[order]
    q = np.where(rng.random(200) < 0.5, rng.random(200), 0.0)
    expected = np.asarray(rows.astype(np.float64) @ q).ravel()
    for page in (rows, shuffled):
        got = row_scores(page.indptr, page.indices, page.data, q)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[4] == 0.0
