"""Service API through TestClient (tiny model, memory index): search, explain, encode, images."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image


def _search(client, **body):
    r = client.post("/search", json={"query": "a red circle", **body})
    assert r.status_code == 200, r.text
    return r.json()


def _oracle(model, corpus, query_row, k):
    """Exact top-k by brute force over the store's rows (the test's own dot product)."""
    from indexer.store import CorpusStore

    with CorpusStore.open(corpus.store) as store:
        ids, rows = store.vectors()
    scores = np.asarray(rows.astype(np.float64) @ query_row.toarray().ravel().astype(np.float64))
    order = np.lexsort((np.arange(len(ids)), -scores))[:k]
    return [ids[i] for i in order], scores[order]


def test_search_scores_are_exact_sums_of_contributions(client, tiny_model, service_corpus):
    out = _search(client, top_k=5, matched_limit=None)
    assert out["mode"] == "model" and out["index_version"] == "v0001"
    assert 0 < len(out["hits"]) <= 5
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    for rank, hit in enumerate(out["hits"], start=1):
        assert hit["rank"] == rank and hit["other_matched_words"] == 0
        contributions = [m["contribution"] for m in hit["matched"]]
        assert contributions == sorted(contributions, reverse=True)
        assert hit["score"] == pytest.approx(sum(contributions), rel=1e-12, abs=1e-12)
        for m in hit["matched"]:
            assert m["contribution"] == pytest.approx(m["query_weight"] * m["image_weight"])
    # the same ranking and scores as a brute-force dot product with the model's own query vector
    row = tiny_model.sparsify(tiny_model.encode_texts(["a red circle"]))
    ids, expected = _oracle(tiny_model, service_corpus, row, 5)
    assert [h["id"] for h in out["hits"]] == ids
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert out["active_words"] == row.nnz
    assert set(out["timings"]) == {"encode_ms", "search_ms", "rescore_ms", "total_ms"}


def test_matched_limit_keeps_the_remainder(client):
    full = _search(client, top_k=2, matched_limit=None)["hits"]
    cut = _search(client, top_k=2, matched_limit=3)["hits"]
    for a, b in zip(full, cut, strict=True):
        assert len(b["matched"]) == 3 and b["other_matched_words"] == len(a["matched"]) - 3
        listed = sum(m["contribution"] for m in b["matched"])
        assert b["score"] == pytest.approx(listed + b["other_contribution"], rel=1e-12)
        assert b["score"] == pytest.approx(a["score"], rel=1e-12)


def test_paging_and_min_score(client, service_corpus):
    whole = _search(client, top_k=8)["hits"]
    pages = _search(client, top_k=4)["hits"] + _search(client, top_k=4, offset=4)["hits"]
    assert [h["id"] for h in pages] == [h["id"] for h in whole]
    assert [h["rank"] for h in pages] == list(range(1, 9))
    floor = whole[3]["score"]
    above = _search(client, top_k=8, min_score=floor)["hits"]
    assert [h["id"] for h in above] == [h["id"] for h in whole[:4]]
    beyond = _search(client, top_k=5, offset=len(service_corpus.ids))
    assert beyond["hits"] == []


def test_words_mode_uses_the_querys_own_words(client, service_app, tiny_model):
    batches = service_app.state.service.pipeline.batcher.batches
    out = _search(client, query="red circle square", mode="words", query_words_limit=None)
    words = {w["word"]: w["weight"] for w in out["query_words"]}
    expected = {"red", "circle", "square"} & set(tiny_model.vocabulary.words)
    assert expected and set(words) == expected
    assert sum(w * w for w in words.values()) == pytest.approx(1.0, rel=1e-6)
    for hit in out["hits"]:
        assert {m["word"] for m in hit["matched"]} <= expected
    assert service_app.state.service.pipeline.batcher.batches == batches  # no LLM call


def test_exclude_and_boost_edit_the_query_vector(client):
    base = _search(client, query="red circle", mode="words")
    weights = {w["word"]: w["weight"] for w in base["query_words"]}
    out = _search(
        client,
        query="red circle",
        mode="words",
        exclude=["circle"],
        boost={"red": 3.0, "blue": 1.0},
    )
    edited = {w["word"]: w["weight"] for w in out["query_words"]}
    assert "circle" not in edited and out["excluded"] == ["circle"]
    assert edited["red"] == pytest.approx(3 * weights["red"], rel=1e-6)
    assert edited["blue"] == pytest.approx(np.mean(list(weights.values())), rel=1e-6)
    for hit in out["hits"]:
        assert "circle" not in {m["word"] for m in hit["matched"]}
    inline = _search(client, query="red circle -circle", mode="words")
    assert inline["query"] == "red circle" and inline["excluded"] == ["circle"]
    assert {w["word"] for w in inline["query_words"]} == {"red"}


@pytest.mark.parametrize(
    ("body", "word", "loc"),
    [
        ({"exclude": ["red", "zzqx"]}, "zzqx", ["body", "exclude", 1]),
        ({"boost": {"qqzz": 2.0}}, "qqzz", ["body", "boost", "qqzz"]),
        ({"query": "red -zzqx"}, "zzqx", ["body", "query"]),
    ],
)
def test_unknown_words_are_named(client, body, word, loc):
    r = client.post("/search", json={"query": "a red circle", **body})
    assert r.status_code == 422
    err = r.json()
    assert f"unknown word '{word}'" in err["detail"] and err["errors"][0]["loc"] == loc


def test_encode_returns_the_query_vector(client):
    enc = client.post("/encode", json={"text": "a red circle"}).json()
    search = _search(client, query_words_limit=None)
    assert enc["active_words"] == len(enc["vector"]) == search["active_words"]
    assert enc["vector"] == {w["word"]: w["weight"] for w in search["query_words"]}
    words = client.post("/encode", json={"text": "Red circle", "mode": "words"}).json()
    assert set(words["vector"]) == {"red", "circle"}


def test_images_and_thumbnails_by_id(client, service_corpus):
    hit = next(h for h in _search(client, top_k=20)["hits"] if "/" in h["id"])  # "more/..."
    r = client.get(hit["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (service_corpus.images / hit["id"]).read_bytes()
    t = client.get(hit["thumbnail_url"])
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    for path in ("/images/nope.png", "/thumbnails/nope.png"):
        r = client.get(path)
        assert r.status_code == 404 and "no image 'nope.png'" in r.json()["detail"]


def test_explain_contributions_words_and_heat_maps(client, tiny_model):
    hit = _search(client, top_k=1)["hits"][0]
    r = client.post(
        "/explain", json={"query": "a red circle", "image_id": hit["id"], "heatmaps": 3}
    )
    assert r.status_code == 200, r.text
    ex = r.json()
    assert ex["score"] == pytest.approx(hit["score"], rel=1e-12)
    assert ex["score"] == pytest.approx(sum(m["contribution"] for m in ex["matched"]), rel=1e-12)
    assert ex["matched"][:20] == hit["matched"]
    weights = [w["weight"] for w in ex["image_words"]]
    assert len(weights) == 30 and weights == sorted(weights, reverse=True)
    g = tiny_model.image.grid_size
    assert ex["grid_size"] == g == 16 and ex["patches_from"] == "original"
    assert [m["word"] for m in ex["heatmaps"]] == [m["word"] for m in ex["matched"][:3]]
    for heat in ex["heatmaps"]:
        values = np.array(heat["values"])
        assert values.shape == (g, g) and values.min() >= 0
        assert heat["max"] == pytest.approx(values.max(), abs=1e-6)
    png = client.get(ex["heatmaps"][0]["url"] + "&size=200")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(png.content))
    assert drawn.size == (200, 200) and len(set(drawn.getdata())) > 50


def test_explain_heat_maps_match_the_models_patch_vectors(client, tiny_model, service_corpus):
    from model.data import decode_bytes

    ex = client.post(
        "/explain",
        json={"query": "red circle", "mode": "words", "image_id": "red-circle.png", "heatmaps": 2},
    ).json()
    image = decode_bytes((service_corpus.images / "red-circle.png").read_bytes()).image
    patches = tiny_model.patch_vectors(tiny_model.preprocess([image]))[0].numpy()
    for heat in ex["heatmaps"]:
        column = patches[:, tiny_model.vocabulary.index(heat["word"])].reshape(16, 16)
        np.testing.assert_allclose(heat["values"], column, atol=2e-3)  # float16 cache


def test_heatmap_png_errors(client):
    r = client.get("/explain/red-circle.png/heatmap.png", params={"word": "zzqx"})
    assert r.status_code == 422 and "unknown word 'zzqx'" in r.json()["detail"]
    r = client.get("/explain/nope.png/heatmap.png", params={"word": "red"})
    assert r.status_code == 404 and "nope.png" in r.json()["detail"]
    r = client.get("/explain/red-circle.png/heatmap.png")
    assert r.status_code == 422 and "word" in r.json()["detail"]


def test_search_by_uploaded_image(client, service_corpus):
    data = (service_corpus.images / "green-square.png").read_bytes()
    r = client.post(
        "/search/image", files={"file": ("query.png", data, "image/png")}, data={"top_k": "3"}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mode"] == "image" and out["query"] == "query.png"
    assert out["hits"][0]["id"] == "green-square.png"  # itself, the best possible match
    hit = out["hits"][0]
    assert hit["score"] == pytest.approx(
        sum(m["contribution"] for m in hit["matched"]) + hit["other_contribution"], rel=1e-12
    )


def test_health_readiness_metrics_and_docs(client, service_settings):
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["index_version"] == "v0001" and ready["images"] > 0
    _search(client, query="a blue square")
    client.post("/explain", json={"query": "blue", "mode": "words", "image_id": "blue-square.png"})
    text = client.get("/metrics").text
    for stage in ("encode", "search", "rescore", "explain", "patches"):
        line = f'lexvla_stage_seconds_count{{stage="{stage}"}}'
        assert line in text and float(text.split(line)[1].split()[0]) > 0
    assert 'lexvla_http_request_seconds_count{method="POST",route="/search",status="200"}' in text
    spec = client.get("/openapi.json").json()
    assert {"/search", "/search/image", "/explain", "/encode", "/admin/reload"} <= set(
        spec["paths"]
    )
    top_k = spec["components"]["schemas"]["SearchRequest"]["properties"]["top_k"]
    assert top_k["maximum"] == service_settings.max_top_k
    assert client.get("/docs").status_code == 200
    ui = client.get("/")
    assert ui.status_code == 200 and 'id="search-form"' in ui.text
    assert client.get("/static/app.js").status_code == 200


def test_a_query_without_vocabulary_words_finds_nothing_and_says_why(client):
    out = _search(client, query="1234 5678 !?", mode="words")  # no lower-case word pieces
    assert out["hits"] == [] and out["active_words"] == 0
    assert "no active vocabulary words" in out["notes"][0]


def test_not_ready_before_the_lifespan_has_run(tiny_model, service_settings):
    import asyncio

    import httpx

    from service.main import create_app

    app = create_app(service_settings, model=tiny_model)  # lifespan not entered: nothing loaded

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/readyz"), await http.post("/search", json={"query": "dog"})

    ready, search = asyncio.run(main())
    assert ready.status_code == 503 and ready.json()["detail"] == "waiting for: index, warmup"
    assert search.status_code == 503 and "starting" in search.json()["detail"]


def test_bind_reranks_the_candidates_by_their_best_patch(client, tiny_model, service_corpus):
    """``bind``: the lexical candidates ordered by the mean of the lexical score and the best
    patch's score, each recomputed here from the model's patch vectors of the stored image; the
    lexical score and its contributions stay what a plain search returns."""
    from model.data import decode_bytes

    body = {"query": "red circle", "mode": "words"}
    plain = _search(client, **body, top_k=20)
    bound = _search(client, **body, top_k=3, offset=1, bind=True)
    q = np.zeros(len(tiny_model.vocabulary), np.float32)
    for w in plain["query_words"]:
        q[tiny_model.vocabulary.index(w["word"])] = w["weight"]
    expected = []
    for hit in plain["hits"]:
        image = decode_bytes((service_corpus.images / hit["id"]).read_bytes()).image
        patches = tiny_model.patch_vectors(tiny_model.preprocess([image]))[0].numpy()
        per_patch = patches @ q
        best = float(per_patch.max()) / float(np.linalg.norm(patches.max(axis=0)))
        where = list(divmod(int(per_patch.argmax()), tiny_model.grid_size))
        expected.append(((hit["score"] + best) / 2, hit, best, where))
    expected.sort(key=lambda t: -t[0])
    assert [h["id"] for h in bound["hits"]] == [t[1]["id"] for t in expected[1:4]]
    assert [h["rank"] for h in bound["hits"]] == [2, 3, 4]
    for hit, (_, lexical, best, where) in zip(bound["hits"], expected[1:4], strict=True):
        assert (
            hit["score"] == pytest.approx(lexical["score"]) and hit["matched"] == lexical["matched"]
        )
        assert hit["bound_score"] == pytest.approx(best, abs=2e-3)  # float16 patch cache
        assert hit["bound_patch"] == where
    assert all(h["bound_score"] is None for h in plain["hits"])


def test_bind_keeps_bound_scores_not_grids_and_leaves_the_heat_maps_cached(service_app, client):
    """A repeated bound search costs no encoder pass (its bound scores are cached per image and
    query), and its candidates do not evict the patch vectors an explanation cached."""
    pipeline = service_app.state.service.pipeline
    calls = []
    compute = pipeline.patches._patch_vectors

    def counted(image):
        calls.append(1)
        return compute(image)

    pipeline.patches._patch_vectors = counted
    try:
        pipeline.patches.cache.clear()
        pipeline.binder.cache.clear()
        explained = client.post(
            "/explain", json={"query": "a red circle", "image_id": "red-circle.png"}
        )
        assert explained.status_code == 200 and len(calls) == 1
        kept = set(pipeline.patches.cache._items)
        body = {"query": "blue square", "mode": "words", "bind": True}
        first = _search(client, **body, top_k=5)
        computed = len(calls)
        assert computed > 1 and set(pipeline.patches.cache._items) == kept  # nothing evicted
        again = _search(client, **body, offset=2, top_k=3)
        assert len(calls) == computed  # every candidate's bound score came from the cache
        assert [h["id"] for h in again["hits"]] == [h["id"] for h in first["hits"]][2:5]
        assert [h["bound_score"] for h in again["hits"]] == [
            h["bound_score"] for h in first["hits"]
        ][2:5]
        heat = client.get("/explain/red-circle.png/heatmap.png", params={"word": "red"})
        assert heat.status_code == 200 and len(calls) == computed  # still cached
    finally:
        pipeline.patches._patch_vectors = compute


def test_bind_without_the_images_is_a_clear_error(tiny_model, service_settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    settings = service_settings.model_copy(update={"store": None})
    with TestClient(create_app(settings, model=tiny_model)) as client:
        r = client.post("/search", json={"query": "red circle", "bind": True})
    assert r.status_code == 422 and "bind needs the indexed images" in r.json()["detail"]
