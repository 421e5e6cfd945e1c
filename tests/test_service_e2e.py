"""End to end: index generated images, start uvicorn on loopback, search, explain, swap, stop."""

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


def test_workers_share_one_port_with_the_settings_of_the_command(
    tiny_checkpoint, tiny_model, tmp_path
):
    """``lexvla serve --workers 2``: both processes answer, configured by the command's flags
    (passed to them as LEXVLA_* variables), over the same memory-mapped index."""
    import os
    import subprocess
    import sys
    import time

    from service_fixtures import REPO, build_corpus, free_port, stop, wait_ready

    corpus = build_corpus(tiny_model, tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--checkpoint", str(tiny_checkpoint),
             "--index", str(corpus.index), "--store", str(corpus.store), "--port", str(port),
             "--workers", "2", "--max-top-k", "3", "--log-level", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, timeout=180)
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, timeout=30) as http:
            while len(pids) < 2 and time.monotonic() < deadline:  # connections spread over both
                with httpx.Client(base_url=url, timeout=30) as fresh:
                    r = fresh.post("/search", json={"query": "a red circle", "top_k": 2})
                    assert r.status_code == 200 and len(r.json()["hits"]) == 2
                    pids.add(fresh.get("/healthz").json()["pid"])
            assert len(pids) == 2, "only one worker answered"
            too_many = http.post("/search", json={"query": "a red circle", "top_k": 5})
            assert too_many.status_code == 422 and "limit of 3" in too_many.text
    finally:
        assert stop(process) == 0
