"""Word filters through the API (+word / -word, require / exclude), served from the memory and
qdrant engines, and a Qdrant server that stops answering: 503 for searches and /readyz."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from indexer.filters import strong_words
from indexer.store import CorpusStore


@pytest.fixture(scope="module")
def strong(service_corpus):
    """id -> the words (display form) each indexed image has, from the store's rows."""
    with CorpusStore.open(service_corpus.store) as store:
        ids, rows = store.vectors()
        words = store.vocabulary.words
    return {
        image_id: {words[w] for w in strong_words(rows.indices[a:b], rows.data[a:b])}
        for image_id, a, b in zip(ids, rows.indptr[:-1], rows.indptr[1:], strict=True)
    }


def _search(client, **body):
    r = client.post("/search", json={"query": "a red circle", "top_k": 50, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _split_word(strong, hits) -> str:
    """A word that some but not all of the unfiltered hits have (so both filters bite)."""
    counts: dict[str, int] = {}
    for h in hits:
        for w in strong[h["id"]]:
            counts[w] = counts.get(w, 0) + 1
    usable = sorted((w for w, c in counts.items() if 0 < c < len(hits) and w.isalpha()),
                    key=lambda w: -counts[w])  # fmt: skip
    assert usable, "the corpus has no word that splits the hits"
    return usable[0]


def test_minus_word_drops_images_that_have_it_and_plus_word_keeps_only_them(client, strong):
    base = _search(client)
    word = _split_word(strong, base["hits"])
    having = {h["id"] for h in base["hits"] if word in strong[h["id"]]}

    minus = _search(client, query=f"a red circle -{word}")
    assert minus["hits"] and not {h["id"] for h in minus["hits"]} & having
    assert minus["filters"]["exclude"] == [word] and minus["filters"]["rule"]
    assert word not in {w["word"] for w in minus["query_words"]}

    plus = _search(client, query=f"a red circle +{word}")
    assert {h["id"] for h in plus["hits"]} == having
    assert plus["filters"] == {**plus["filters"], "require": [word], "exclude": []}
    assert plus["query"] == "a red circle"
    # the request fields mean the same as the inline tokens
    assert [h["id"] for h in _search(client, require=[word])["hits"]] == [
        h["id"] for h in plus["hits"]
    ]
    assert [h["id"] for h in _search(client, exclude=[word])["hits"]] == [
        h["id"] for h in minus["hits"]
    ]
    only = _search(client, query=f"+{word}", mode="words")  # a query of only filters
    assert only["query"] == word and {h["id"] for h in only["hits"]} <= having


def test_the_readme_s_filter_examples_on_the_shapes_corpus(client, strong):
    """``-star`` returns no image that has "star", ``+circle`` only images that have "circle"."""
    minus = _search(client, query="a green triangle -star")
    assert all("star" not in strong[h["id"]] for h in minus["hits"])
    plus = _search(client, query="a red circle +circle")
    assert all("circle" in strong[h["id"]] for h in plus["hits"])
    having = {i for i, words in strong.items() if "circle" in words}
    assert {h["id"] for h in plus["hits"]} <= having


def test_boost_zero_ignores_a_word_without_filtering(client, strong):
    base = _search(client, mode="words", query="red circle square")
    ignored = _search(client, mode="words", query="red circle square", boost={"square": 0.0})
    assert "square" not in {w["word"] for w in ignored["query_words"]}
    assert ignored["filters"]["exclude"] == [] and ignored["filters"]["rule"] == ""
    assert len(ignored["hits"]) == len(base["hits"])  # nothing dropped, only re-weighted


def test_conflicting_filters_are_a_422(client):
    r = client.post("/search", json={"query": "a red circle +red -red"})
    assert r.status_code == 422 and "both required and excluded" in r.json()["detail"]


# --- the same searches served by the qdrant engine ---------------------------------------------
pytest.importorskip("qdrant_edge", reason="qdrant-edge-py is not installed (the index extra)")


@pytest.fixture(scope="module")
def qdrant_apps(service_settings, service_corpus, tiny_model, tmp_path_factory):
    from fastapi.testclient import TestClient
    from qdrant_client import QdrantClient

    from indexer.engines.qdrant.index import QdrantIndex
    from service.main import create_app

    store = CorpusStore.open(service_corpus.store)
    ids, rows = store.vectors()
    v, h = len(tiny_model.vocabulary), tiny_model.vocabulary.hash
    embedded = QdrantIndex.create(v, h, workdir=tmp_path_factory.mktemp("edge"))
    server = QdrantIndex.create(v, h, client=QdrantClient(":memory:"), collection="svc")
    for index in (embedded, server):
        index.add(ids, rows)
    clients = []
    # these apps serve the index objects given, never the shared corpus's index directory
    settings = service_settings.model_copy(update={"index": None})
    for index in (embedded, server):
        app = create_app(settings, model=tiny_model, index=index, store=store)
        clients.append(TestClient(app).__enter__())
    yield clients, server
    for c in clients:
        c.__exit__(None, None, None)
    store.close()


def test_qdrant_engines_serve_the_same_filtered_results(client, qdrant_apps, strong):
    base = _search(client)
    word = _split_word(strong, base["hits"])
    for query in ("a red circle", f"a red circle -{word}", f"a red circle +{word}"):
        expected = _search(client, query=query)["hits"]
        for other in qdrant_apps[0]:
            got = _search(other, query=query)["hits"]
            assert [h["id"] for h in got] == [h["id"] for h in expected], query
            np.testing.assert_allclose(
                [h["score"] for h in got], [h["score"] for h in expected], rtol=1e-6
            )


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def _closed_port_client():
    from indexer.engines.qdrant.server import QdrantConnection

    return QdrantConnection(_closed_port_url(), timeout_s=1).client()


def test_a_qdrant_server_that_goes_down_gives_503_not_500(qdrant_apps):
    clients, server = qdrant_apps
    http = clients[1]
    assert http.get("/readyz").status_code == 200
    working = server.backend.client
    server.backend.client = _closed_port_client()
    try:
        r = http.post("/search", json={"query": "a red circle"})
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["detail"] and "LEXVLA_QDRANT_URL" in r.json()["detail"]
        ready = http.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["index"]
        assert "unreachable" in ready.json()["detail"]
        r = http.post("/explain", json={"query": "a red circle", "image_id": "red-circle.png"})
        assert r.status_code == 503  # the engine's rows are exact: explain reads them there
    finally:
        server.backend.client = working
    assert http.get("/readyz").status_code == 200
    assert http.post("/search", json={"query": "a red circle"}).status_code == 200


def test_serve_stops_at_start_up_with_one_line_when_qdrant_is_unreachable(
    tiny_checkpoint, tiny_model, tmp_path, capsys
):
    from qdrant_client import QdrantClient

    from indexer.engines import publish
    from indexer.engines.qdrant.index import QdrantIndex
    from service.cli import main as serve_main

    dead = _closed_port_url()
    index = QdrantIndex.create(
        len(tiny_model.vocabulary),
        tiny_model.vocabulary.hash,
        client=QdrantClient(":memory:"),
        collection="gone",
        url=dead,
    )
    publish(index, tmp_path / "ix")
    code = serve_main(["--checkpoint", str(tiny_checkpoint), "--index", str(tmp_path / "ix")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        err.startswith("lexvla serve: the Qdrant server at http://127.0.0.1:")
        and "unreachable" in err
    )
