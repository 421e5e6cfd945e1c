"""``kill -9`` of a two-worker server during 300 concurrent uploads, then a restart: every
acknowledged image is searchable exactly once, and the store and the index hold the same images
(nothing half there)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from indexer.engines import open_index
from indexer.store import CorpusStore
from tests.service_fixtures import (
    REPO,
    build_corpus,
    free_port,
    png,
    shape_image,
    stop,
    wait_ready,
)

UPLOADS = 300
ADMIN = {"X-API-Key": "admin-key"}


def start(command, env, log):
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,  # one process group: the arbiter and its workers
        )  # fmt: skip


def picture(n: int) -> bytes:
    shape, colour = ["circle", "square", "triangle"][n % 3], ["red", "green", "blue"][n // 3 % 3]
    return png(shape_image(shape, colour, background=(n % 251, 7 * n % 253, 13 * n % 255)))


def test_kill_9_during_uploads_loses_no_acknowledged_image(tiny_model, tiny_checkpoint, tmp_path):
    corpus = build_corpus(tiny_model, tmp_path / "corpus")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEXVLA_API_KEY": "admin-key"}
    command = [
        sys.executable, "-m", "service", "--checkpoint", str(tiny_checkpoint),
        "--index", str(corpus.index), "--store", str(corpus.store), "--port", str(port),
        "--workers", "2", "--index-refresh-s", "0.5", "--log-level", "warning",
    ]  # fmt: skip
    url, log = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    process = start(command, env, log)
    wait_ready(url, process, log, timeout=180)
    images = {f"up/{n:03d}.png": picture(n) for n in range(UPLOADS)}
    acknowledged: list[str] = []

    def send(image_id: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                r = client.post(
                    "/images", headers=ADMIN,
                    files={"file": (image_id, images[image_id], "image/png")},
                    data={"id": image_id},
                )  # fmt: skip
        except httpx.HTTPError:
            return  # the server died before answering: not acknowledged
        if r.status_code == 201 and r.json()["images"][0]["status"] == "indexed":
            acknowledged.append(image_id)

    pool = ThreadPoolExecutor(16)
    futures = [pool.submit(send, i) for i in images]
    deadline = time.monotonic() + 240
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the arbiter and both workers, mid-write
    process.wait(10)
    for f in futures:
        f.result()
    pool.shutdown()
    assert 20 <= len(acknowledged) < UPLOADS, len(acknowledged)

    process = start(command, env, log)
    try:
        wait_ready(url, process, log, timeout=180)
        with CorpusStore.open(corpus.store) as store:
            stored = store.ids()
        index = open_index(corpus.index)
        assert len(stored) == len(set(stored)) == index.count()  # each image exactly once
        held = set(index.fields.id_texts(np.arange(len(index.fields))))
        assert held == set(stored)  # nothing half there: the index holds what the store holds
        assert set(acknowledged) <= held
        for image_id in acknowledged[:5] + acknowledged[-5:]:  # searchable, in either worker
            with httpx.Client(base_url=url, timeout=60) as client:
                r = client.post(
                    "/search/image", headers=ADMIN, data={"top_k": "3"},
                    files={"file": ("q.png", images[image_id], "image/png")},
                )  # fmt: skip
            assert r.status_code == 200 and r.json()["hits"][0]["id"] == image_id
    finally:
        stop(process)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
