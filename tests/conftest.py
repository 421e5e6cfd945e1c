"""Shared fixtures: tiny random LexVLA checkpoints (built locally, no network) and shared/ data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
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


# The demo's run (``full_demo``) is the suite's longest step: the process that starts the run
# (xdist's controller, or the only process) starts it at once, beside the tests, when the run
# selects a module that reads it; this variable names its work folder in every process.
DEMO_ENV = "LEXVLA_TEST_DEMO"
DEMO_S = 2400  # the demo's own limit in the suite; the tests that read it allow it (+ margin)
DEMO_READERS = ("tests/test_demo.py", "tests/test_training_learning.py")
DEMO_NICE = 5  # xdist's workers run this much lower than the demo, the longest step


def start_demo(folder: Path) -> subprocess.Popen:
    """``lexvla demo --no-serve`` with its default recipe in its own process, as ``make demo``
    runs it, not inside a test worker: a worker holds the threads of every test before it
    (servers, executors, writers), and the training's data-loader worker is a fork that would
    copy whatever locks they hold. Its output goes to ``folder/out`` (stderr: ``folder/err``),
    then its exit status to ``folder/rc`` (written last, by a rename), which any process can
    wait for."""
    command = [sys.executable, "-m", "lexvla", "demo", "--workdir", str(folder / "work"),
               "--quiet", "--no-serve"]  # fmt: skip
    script = '"$@" > "$0/out" 2> "$0/err"; echo $? > "$0/rc.tmp" && mv "$0/rc.tmp" "$0/rc"'
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        ["sh", "-c", script, str(folder), *command], env=env, cwd=REPO, start_new_session=True
    )


def stop_demo(process: subprocess.Popen) -> None:
    """End the demo's process group unless it has ended."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    process.wait()


def wait_demo(folder: Path) -> str:
    """The demo's output once its run in ``folder`` has ended; fails unless it succeeded."""
    deadline = time.monotonic() + DEMO_S
    while not (folder / "rc").is_file():
        if time.monotonic() > deadline:
            pytest.fail(f"the demo ran past {DEMO_S} s; its output so far:\n{_output(folder)}")
        time.sleep(1)
    assert (folder / "rc").read_text().strip() == "0", _output(folder)
    return (folder / "out").read_text()


def _output(folder: Path) -> str:
    return "".join((folder / name).read_text(errors="replace")[-3000:] for name in ("out", "err"))


def selects_demo(config: pytest.Config) -> bool:
    """Whether the run's paths (without ``-k``/``-m``, which may leave the demo out) take in a
    module that reads the demo, so that starting it early is never wasted."""
    option = config.option
    if option.keyword or option.markexpr or option.collectonly or getattr(option, "lf", False):
        return False
    root = config.invocation_params.dir
    readers = [REPO / module for module in DEMO_READERS]
    for arg in config.args:
        path = (root / arg.split("::", 1)[0]).resolve()
        if any(module == path or path in module.parents for module in readers):
            return True
    return False


_demo_key = pytest.StashKey[tuple[subprocess.Popen, Path]]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # xdist's workers yield the cores to the demo
        os.nice(DEMO_NICE)
        return
    if DEMO_ENV in os.environ or not selects_demo(config):
        return
    folder = Path(tempfile.mkdtemp(prefix="lexvla-test-demo-"))
    config.stash[_demo_key] = (start_demo(folder), folder)
    os.environ[DEMO_ENV] = str(folder)  # xdist's workers, started later, inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    if _demo_key not in config.stash:
        return
    process, folder = config.stash[_demo_key]
    stop_demo(process)  # if the run stopped before the demo's readers waited for it
    os.environ.pop(DEMO_ENV, None)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def full_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The demo's run (backbone pretraining, LexVLA training, indexing, evaluation), once for
    the suite: its work folder and its output. The demo test and the learning test both read
    it; it was started with the run (``pytest_configure``) when the run's paths take it in."""
    if DEMO_ENV in os.environ:
        folder = Path(os.environ[DEMO_ENV])
        yield folder / "work", wait_demo(folder)
        return
    folder = tmp_path_factory.mktemp("full-demo")
    process = start_demo(folder)
    try:
        yield folder / "work", wait_demo(folder)
    finally:
        stop_demo(process)


# Modules whose tests must share a process: the demo's readers share its one run (``full_demo``).
SAME_PROCESS = {"tests/test_training_learning.py": "tests/test_demo.py"}
# The modules that take longest, longest first: they start first, so that the two processes end
# together; the demo's readers come last, when its run (started with the session) is done or near.
LONGEST = [
    "tests/test_service_workers.py",
    "tests/test_indexer_runner.py",
    "tests/test_service_ui.py",
    "tests/test_readme.py",
    "tests/test_service_writes_crash.py",
    "tests/test_service_errors.py",
    "tests/test_bench_gpu.py",
    "tests/test_service_writes.py",
    "tests/test_compact_merges.py",
    "tests/test_indexer_qdrant_where.py",
    "tests/test_indexer_qdrant.py",
    "tests/test_service_config.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order modules run in (``LONGEST`` first, the demo's readers last); within a module
    its tests keep their order. Under xdist every worker collects the same order, which the
    scheduler below keeps."""
    first = {module: i for i, module in enumerate(LONGEST)}

    def rank(item: pytest.Item) -> tuple[int, int]:
        module = item.nodeid.split("::", 1)[0]
        if module in DEMO_READERS:
            return (2, DEMO_READERS.index(module))
        return (0, first[module]) if module in first else (1, 0)

    items.sort(key=rank)  # stable: the collection's order otherwise


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``pytest -n N --dist loadscope`` (``make test``) a module's tests run in one worker
    process, so module fixtures (a corpus, a live server, gunicorn workers) are built once and
    its tests keep their order; ``SAME_PROCESS`` puts modules together, so the demo runs once.
    Modules are handed out in the collection's order (``pytest_collection_modifyitems``)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # not by the number of tests: the order above

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
