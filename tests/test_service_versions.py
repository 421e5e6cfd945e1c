"""Which index version a process serves: it follows ``CURRENT`` by itself, swaps atomically,
keeps the old version when a new one fails to open, obeys a pin, and closes a retired version
(``service.state``, ``service.search.indexes``, ``indexer.engines.versions``; several processes:
tests/test_service_workers.py)."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from fastapi.testclient import TestClient

from indexer.engines.versions import PINNED, pin, pinned, prune, served_version, unpin


@pytest.fixture
def corpus(tiny_model, tmp_path):
    from service_fixtures import build_corpus

    return build_corpus(tiny_model, tmp_path)


def _publish_more(tiny_model, corpus, n: int = 2, start: int = 50) -> None:
    from service_fixtures import index_folder, write_images

    write_images(corpus.images, n_extra=n, start=start)
    index_folder(tiny_model, corpus.images, corpus.store, corpus.index)


def _app(tiny_model, tiny_checkpoint, corpus, **settings):
    from service.core.config import Settings
    from service.main import create_app

    base = {"checkpoint": tiny_checkpoint, "index": corpus.index, "store": corpus.store}
    return create_app(Settings(**base, api_key="k", **settings), model=tiny_model)


def test_pin_names_the_served_version_until_unpinned(tiny_model, corpus):
    _publish_more(tiny_model, corpus)
    assert served_version(corpus.index).name == "v0002"
    assert pin(corpus.index, "v0001").name == "v0001"
    assert pinned(corpus.index) == "v0001" and served_version(corpus.index).name == "v0001"
    _publish_more(tiny_model, corpus, start=60)  # a publish moves CURRENT, not the pin
    assert served_version(corpus.index).name == "v0001"
    assert prune(corpus.index, keep=1) == ["v0002"]  # never the pinned one
    assert unpin(corpus.index) and not unpin(corpus.index)
    assert served_version(corpus.index).name == "v0003"
    with pytest.raises(FileNotFoundError, match="no index version 'v0009'"):
        pin(corpus.index, "v0009")
    with pytest.raises(ValueError, match="not a version name"):
        pin(corpus.index, "../v0001")
    (corpus.index / PINNED).write_text("latest\n")
    with pytest.raises(ValueError, match="PINNED is corrupt"):
        served_version(corpus.index)


def test_a_process_follows_a_publish_by_itself(tiny_model, tiny_checkpoint, corpus):
    """No reload call: the follower swaps within the refresh interval, and the images of the
    new version are found."""
    app = _app(tiny_model, tiny_checkpoint, corpus, index_refresh_s=0.1)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["index_version"] == "v0001"
        _publish_more(tiny_model, corpus)
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["index_version"] != "v0002":
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.05)
        ready = client.get("/readyz").json()
        assert ready["images"] == len(corpus.ids) + 2
        assert [p["index_version"] for p in ready["processes"]] == ["v0002"]
        assert ready["processes"][0]["pid"] == os.getpid()
        found = client.post("/search", json={"query": "a red circle", "top_k": 20}).json()
        assert found["index_version"] == "v0002"
        assert any(h["id"].startswith("more/extra-5") for h in found["hits"])
        text = client.get("/metrics").text
        assert 'lexvla_index_version_info{version="v0002"} 1.0' in text
        assert 'lexvla_index_version_info{version="v0001"} 0.0' in text
        assert "lexvla_index_reloads_total 1.0" in text


def test_a_version_that_fails_to_open_keeps_the_old_one_serving(
    tiny_model, tiny_checkpoint, corpus, caplog
):
    """A version built with another vocabulary: not swapped in, reported once (log, metric,
    /readyz) while the old one serves; a later good version clears the report."""
    app = _app(tiny_model, tiny_checkpoint, corpus, index_refresh_s=60)  # follow() by hand
    _publish_more(tiny_model, corpus)
    broken = corpus.index / "versions" / "v0002" / "index.json"
    manifest = json.loads(broken.read_text())
    broken.write_text(json.dumps({**manifest, "vocabulary_hash": "0" * 16}))
    pin(corpus.index, "v0001")  # start on v0001, then point at the broken one
    with TestClient(app) as client, caplog.at_level(logging.ERROR, logger="service"):
        state = app.state.service
        unpin(corpus.index)
        for _ in range(3):
            assert client.portal.call(state.follow).version == "v0001"
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["index_version"] == "v0001"
        assert ready["index_error"].startswith("v0002 did not open:")
        assert "vocabulary" in ready["index_error"]
        assert ready["processes"][0]["error"] == ready["index_error"]
        assert client.post("/search", json={"query": "a red circle"}).status_code == 200
        assert "lexvla_index_open_failures_total 1.0" in client.get("/metrics").text
        assert sum("v0002 did not open" in r.message for r in caplog.records) == 1

        refused = client.post("/admin/reload", headers={"X-API-Key": "k"})
        assert refused.status_code == 409 and "still serving the old one" in refused.text

        broken.write_text(json.dumps(manifest))  # mended: the next try takes it
        _publish_more(tiny_model, corpus, start=60)
        assert client.portal.call(state.follow).version == "v0003"
        assert client.get("/readyz").json()["index_error"] is None

        (corpus.index / "CURRENT").rename(corpus.index / "CURRENT.moved")  # an operator's slip
        for _ in range(2):
            assert client.portal.call(state.follow).version == "v0003"
        error = client.get("/readyz").json()["index_error"]
        assert (
            error.startswith(f"the index directory {corpus.index} is unreadable")
            and "CURRENT" in error
        )
        assert client.post("/search", json={"query": "a red circle"}).status_code == 200
        (corpus.index / "CURRENT.moved").rename(corpus.index / "CURRENT")
        assert client.portal.call(state.follow).version == "v0003"
        assert client.get("/readyz").json()["index_error"] is None
        assert "lexvla_index_open_failures_total 2.0" in client.get("/metrics").text


def test_reload_pins_every_process_and_unpins(tiny_model, tiny_checkpoint, corpus, caplog):
    """POST /admin/reload {version} pins it (a worker that restarts reads the pin too); without
    a version it follows CURRENT again; a retired version is closed once its requests end."""
    _publish_more(tiny_model, corpus)
    app = _app(tiny_model, tiny_checkpoint, corpus, index_refresh_s=60)
    admin = {"X-API-Key": "k"}
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="service"):
        assert client.get("/readyz").json()["index_version"] == "v0002"
        back = client.post("/admin/reload", json={"version": "v0001"}, headers=admin)
        assert back.status_code == 200, back.text
        body = back.json()
        assert (body["previous"], body["current"]) == ("v0002", "v0001")
        assert [p["index_version"] for p in body["processes"]] == ["v0001"]
        assert pinned(corpus.index) == "v0001"
        assert client.post("/search", json={"query": "a cat"}).json()["index_version"] == "v0001"
        deadline = time.monotonic() + 10
        while "index v0002 closed" not in caplog.text:
            assert time.monotonic() < deadline, "the retired version was never closed"
            time.sleep(0.05)

        missing = client.post("/admin/reload", json={"version": "v0042"}, headers=admin)
        assert missing.status_code == 404 and "v0042" in missing.text
        assert pinned(corpus.index) == "v0001"  # a refused pin changes nothing

        forward = client.post("/admin/reload", headers=admin).json()
        assert forward["current"] == "v0002" and pinned(corpus.index) is None
        assert client.post("/admin/reload", json={"version": "v0002"}).status_code == 401


def test_workers_share_the_cores_between_their_compact_searches():
    from service.core.config import Settings
    from service.search.indexes import index_options, search_threads

    cores = len(os.sched_getaffinity(0))
    assert search_threads(1) == cores and search_threads(2) == max(1, cores // 2)
    assert search_threads(4 * cores) == 1
    assert index_options(Settings(workers=2))["compact"]["threads"] == max(1, cores // 2)
    assert index_options(Settings(workers=2, compact_threads=3))["compact"]["threads"] == 3
