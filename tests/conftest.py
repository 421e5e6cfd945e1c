"""Shared fixtures: tiny random LexVLA checkpoints (built locally, no network) and shared/ data."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

# Tests never touch the network: a missing local model must fail at once, not retry a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)

# The service tests' fixtures (corpus, app, client, live server) and the compact engine's
# (corpus, pair) live in their own modules.
pytest_plugins = ["service_fixtures", "compact_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # bench/ (its live-server and browser helpers) from any directory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (tests that use real data need ../shared)")
    return path


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(shared_data: Path) -> Path:
    path = shared_data / "llama2-tokenizer"
    if not (path / "tokenizer.model").is_file():
        pytest.skip(f"the real Llama 2 tokenizer is not at {path}")
    return path


@pytest.fixture(scope="session")
def flickr_sample(shared_data: Path) -> Path:
    path = shared_data / "flickr8k-sample"
    if not (path / "captions.csv").is_file():
        pytest.skip(f"the Flickr8k sample is not at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny checkpoint (text side fully trainable, the tiny preset's default)."""
    from model.tiny import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_lora_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny checkpoint whose text side is LoRA-tuned (the paper's setting)."""
    from model.tiny import create_tiny_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny-lora"
    return create_tiny_checkpoint(path, seed=1, overrides={"text.train_mode": "lora"})


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from model import LexVLA

    return LexVLA.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def full_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``lexvla demo --no-serve`` with its default recipe (backbone pretraining, LexVLA
    training, indexing, evaluation), run once for the suite: its work folder and its output.
    The demo test and the learning test both read it (4-6 minutes on a shared 2-core CPU).

    It runs as its own process, as ``make demo`` runs it, not inside the test worker: the
    worker holds the threads of every test before it (servers, executors, writers), and the
    training's data-loader worker is a fork that would copy whatever locks they hold."""
    import subprocess

    work = tmp_path_factory.mktemp("full-demo") / "work"
    command = [sys.executable, "-m", "lexvla", "demo", "--workdir", str(work), "--quiet",
               "--no-serve"]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DEMO_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the demo ran past {DEMO_S} s; its output so far:\n{exc.stdout}{exc.stderr}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work, run.stdout


DEMO_S = 2400  # the demo's own limit in the suite; the tests that read it allow it (+ margin)


# Modules whose tests must share a process: the demo's readers share its one run (``full_demo``).
SAME_PROCESS = {"tests/test_training_learning.py": "tests/test_demo.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``pytest -n N --dist loadscope`` (``make test``) a module's tests run in one worker
    process, so module fixtures (a corpus, a live server, gunicorn workers) are built once and
    its tests keep their order; ``SAME_PROCESS`` puts modules together, so the demo runs once."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_PROCESS.get(module, module)

    return ModuleScheduling(config, log)


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium over the DevTools protocol (``bench/live.py``), failing the test that
    leaves a script error on its last page (the UI tests)."""
    from bench.live import Browser
    from tests.ui_support import CATCH_ERRORS

    b = Browser(tmp_path / "profile")
    try:
        b.call("Page.enable")
        b.call("Page.addScriptToEvaluateOnNewDocument", source=CATCH_ERRORS)
        yield b
        assert b.js("window.pageErrors") == []  # no script error on the last page
    finally:
        b.close()
