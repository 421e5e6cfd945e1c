"""Fixtures of the service tests (a pytest plugin registered in ``conftest.py``; no tests here).

A tiny corpus of generated images, indexed the way a user would index it: generated PNGs in a
folder -> ``indexer.runner.run_index_job`` with the tiny model -> a corpus store (metadata and
thumbnails) and a published memory index. Plus the app, a client and a live uvicorn server.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bench.live import free_port, stop, wait_ready

REPO = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def shape_image(
    shape: str, colour: str, size: int = 160, background=(245, 245, 235)
) -> Image.Image:
    image = Image.new("RGB", (size, size + 20), background)
    draw = ImageDraw.Draw(image)
    rgb = COLOURS[colour]
    box = (30, 40, size - 30, size - 10)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(size // 2, 40), (30, size - 10), (size - 30, size - 10)], fill=rgb)
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Corpus:
    root: Path
    images: Path
    store: Path
    index: Path
    ids: list[str]


def write_images(folder: Path, n_extra: int = 0, start: int = 0) -> list[str]:
    """3 shapes x 3 colours (when ``start == 0``) + ``n_extra`` variants in ``more/``; their ids."""
    ids = []
    if start == 0:
        for shape in SHAPES:
            for colour in COLOURS:
                (folder / f"{colour}-{shape}.png").write_bytes(png(shape_image(shape, colour)))
                ids.append(f"{colour}-{shape}.png")
    (folder / "more").mkdir(parents=True, exist_ok=True)
    for n in range(start, start + n_extra):
        shape, colour = SHAPES[n % 3], list(COLOURS)[(n // 3) % 3]
        image = shape_image(shape, colour, background=(n * 37 % 255, 200, 90))
        (folder / "more" / f"extra-{n}.png").write_bytes(png(image))
        ids.append(f"more/extra-{n}.png")
    return ids


def index_folder(model, folder: Path, store: Path, index: Path) -> None:
    """Index a folder into a store and a published memory index with the indexer's job runner."""
    from indexer.job import IndexJob
    from indexer.runner import run_index_job

    job = IndexJob(
        source=str(folder), store=str(store), checkpoint="unused", index=str(index),
        progress=False, batch_size=8,
    )  # fmt: skip
    run_index_job(job, model=model)


def build_corpus(model, root: Path, n_extra: int = 0) -> Corpus:
    """Generated images in ``root/images`` -> corpus store ``root/store`` + index ``root/index``."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = write_images(images, n_extra)
    index_folder(model, images, root / "store", root / "index")
    return Corpus(root, images, root / "store", root / "index", ids)


@pytest.fixture(scope="session")
def service_corpus(tiny_model, tmp_path_factory) -> Corpus:
    return build_corpus(tiny_model, tmp_path_factory.mktemp("service-corpus"), n_extra=3)


@pytest.fixture(scope="session")
def service_settings(service_corpus, tiny_checkpoint):
    from service.core.config import Settings

    return Settings(
        checkpoint=tiny_checkpoint,
        index=service_corpus.index,
        store=service_corpus.store,
        api_key="test-key",
        batch_wait_ms=2.0,
    )


@pytest.fixture(scope="session")
def service_app(service_settings, tiny_model):
    """One app for the read-only tests (lifespan entered once)."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    app = create_app(service_settings, model=tiny_model)
    with TestClient(app) as client:
        app.state.test_client = client
        yield app


@pytest.fixture
def client(service_app):
    return service_app.state.test_client


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    corpus: Corpus
    log: Path


@pytest.fixture(scope="module")
def live_server(tiny_model, tiny_checkpoint, tmp_path_factory):
    """A real ``python -m service`` (uvicorn) on a free loopback port, over a fresh corpus."""
    root = tmp_path_factory.mktemp("live")
    corpus = build_corpus(tiny_model, root, n_extra=3)
    port = free_port()
    env = {
        **os.environ,
        "LEXVLA_CHECKPOINT": str(tiny_checkpoint),
        "LEXVLA_STORE": str(corpus.store),
        "LEXVLA_API_KEY": "live-key",
        "HF_HUB_OFFLINE": "1",
    }
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--index", str(corpus.index), "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield LiveServer(url, process, corpus, log)
    finally:
        stop(process)
