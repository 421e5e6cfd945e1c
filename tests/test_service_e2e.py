"""End to end: index generated images, start uvicorn on loopback, search, explain, swap, stop
(several workers under gunicorn: tests/test_service_workers.py)."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image


def test_index_serve_search_explain_reload_stop(live_server, tiny_model):
    from service_fixtures import index_folder, stop, write_images

    url, corpus = live_server.url, live_server.corpus
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        ready = http.get("/readyz").json()
        assert ready["ready"] and ready["images"] == len(corpus.ids)

        found = http.post("/search", json={"query": "a blue square", "top_k": 5}).json()
        assert len(found["hits"]) == 5 and found["index_version"] == "v0001"
        hit = found["hits"][0]
        assert hit["score"] == pytest.approx(
            sum(m["contribution"] for m in hit["matched"]) + hit["other_contribution"]
        )
        thumb = http.get(hit["thumbnail_url"])
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"

        words = http.post("/search", json={"query": "blue square", "mode": "words"}).json()
        assert {w["word"] for w in words["query_words"]} == {"blue", "square"}

        ex = http.post("/explain", json={"query": "a blue square", "image_id": hit["id"]})
        assert ex.status_code == 200, ex.text
        explanation = ex.json()
        assert explanation["score"] == pytest.approx(hit["score"])
        heat = http.get(explanation["heatmaps"][0]["url"])
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"

        metrics = http.get("/metrics").text
        assert 'lexvla_stage_seconds_count{stage="explain"} 1.0' in metrics

        # index more images with the job runner; the running server swaps them in on request
        write_images(corpus.images, n_extra=2, start=50)
        index_folder(tiny_model, corpus.images, corpus.store, corpus.index)
        denied = http.post("/admin/reload")
        assert denied.status_code == 401
        swapped = http.post("/admin/reload", headers={"X-API-Key": "live-key"}).json()
        assert swapped["current"] == "v0002" and swapped["images"] == len(corpus.ids) + 2
        after = http.post("/search", json={"query": "a blue square", "top_k": 5}).json()
        assert after["index_version"] == "v0002"

    # SIGTERM: uvicorn finishes the lifespan, then exits by the signal it caught (0 on older ones)
    assert stop(live_server.process) in (0, -15)
    log = live_server.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
