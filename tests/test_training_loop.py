"""The training loop end to end on the tiny model: CLI, logs, checkpoints, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import LexVLA
from training import checkpoints
from training.cli import main
from training.config import load_config
from training.loop import train

REPO = Path(__file__).resolve().parents[1]

# Small and fast: 56 px images (4x4 patches), 4 samples a step, an epoch of 6 steps.
FAST = {
    "model.overrides.image.image_size": 56,
    "data.train": "shapes:24",
    "data.augment": True,
    "data.num_workers": 0,
    "batch_size": 4,
    "log_every": 1,
    "cpu_threads": 1,
    "progress": False,
    "optim.lr_adapter": 3e-3,
    "optim.lr_visual_codebook": 3e-3,
    "optim.warmup_steps": 2,
    "eval.data": None,
    # the loop's mechanics on the random backbones (pretraining: tests/test_training_pretrain.py)
    "pretrain.image.steps": 0,
    "pretrain.text.steps": 0,
    # and without the query table stage after them (tests/test_training_query_table.py)
    "query_table.steps": 0,
}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_run_logs_checkpoints_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [f"{k}={v}" for k, v in FAST.items()]
    args += [f"output_dir={run}", "steps=4", "checkpoint.every=2", "checkpoint.keep_last=1"]
    args += ["eval.data=shapes:12", "eval.top_k=[8]"]
    assert main(["train", "--config", "tiny-shapes", *args]) == 0
    lines = _metrics(run)
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    for line in steps:
        assert {"contrastive_loss", "image_overuse_loss", "text_overuse_loss"} <= set(line)
        assert set(line["lr"]) == {"adapter", "visual_codebook", "text", "temperature"}
        assert line["samples_per_s"] > 0 and line["skipped_total"] == 0
    evaluation = next(line["eval"] for line in lines if "eval" in line)
    assert {"dense", "threshold", "top-8"} <= set(evaluation["retrieval"])
    assert set(evaluation["patchdis"]) == {"kind", "colour"}
    # keep_last=1: only the final checkpoint, complete, with the training config beside it
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [4]
    final = checkpoints.latest_checkpoint(run)
    assert final is not None
    saved = json.loads((final / "train_config.json").read_text())
    assert saved["steps"] == 4 and saved["model"]["overrides"]["image.image_size"] == 56
    model = LexVLA.from_pretrained(final)
    assert model.config.image.image_size == 56
    # the saved model is the trained one (not the random start)
    first = LexVLA.from_config(model.config)
    assert not torch.equal(first.image.adapter.proj.weight, model.image.adapter.proj.weight)
    out = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(run), "--data", "shapes:8", "--top-k", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["retrieval"]["top-4"]["active_words_image"] == 4.0


def test_print_config_and_bad_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "tiny-shapes", "steps=7", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 7 and printed["optim"]["lr_lora"] == 2e-4
    assert main(["train", "steps=7", "optim.lr_adaptr=1", "--print-config"]) == 2
    assert "lr_adaptr" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-file.json"]) == 2


KILL_AT = 5
_KILLED_RUN = """
import json, os, signal, sys
from training.config import load_config
from training.loop import train

def kill(step, result):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

train(load_config("tiny-shapes", json.loads(sys.argv[1])), on_step=kill)
"""


def test_a_killed_run_resumes_to_the_same_losses(tmp_path: Path) -> None:
    # one DataLoader worker (prefetching ahead of the loop) and an epoch boundary at step 6
    settings = FAST | {"steps": 8, "checkpoint.every": 2, "data.num_workers": 1}
    reference = train(load_config("tiny-shapes", settings | {"output_dir": str(tmp_path / "a")}))
    killed = settings | {"output_dir": str(tmp_path / "b")}
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    code = _KILLED_RUN.format(kill_at=KILL_AT)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(killed)], cwd=REPO, env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert [s for s, _ in checkpoints.list_checkpoints(tmp_path / "b")] == [2, 4]
    resumed = train(load_config("tiny-shapes", killed))  # resume="auto": no manual step
    assert resumed["start_step"] == 4 and resumed["step"] == 8
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [line["step"] for line in b] == list(range(1, 9))  # the killed run's extra lines went
    for x, y in zip(a, b, strict=True):
        for part in ("loss", "contrastive_loss", "image_overuse_loss", "grad_norm"):
            assert y[part] == pytest.approx(x[part], rel=1e-6, abs=1e-9), (x["step"], part)
        assert x["epoch"] == y["epoch"]
    assert resumed["last"]["loss"] == pytest.approx(reference["last"]["loss"], rel=1e-6)
