"""Training checkpoints: model + training state in one folder per step, written atomically.

Layout of an output directory::

    train_config.json                the resolved training config of the run
    metrics.jsonl                    one line per log step (``training.metrics``)
    checkpoints/step-00001000/       a model checkpoint (``LexVLA.save_pretrained``, loadable by
        config.json, ...             ``LexVLA.from_pretrained``, the indexer and ``lexvla eval``)
        train_config.json            the training config that produced it
        training_state.pt            optimizer, scheduler, step, data position per rank,
                                     skip counts, RNG states per rank (python, numpy, torch, cuda)

A checkpoint is first written as ``checkpoints/.step-00001000.partial`` and renamed into place
when complete, so a folder named ``step-*`` is always whole; leftovers of a killed save are
removed at the next start. Only the last ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic import replace_directory
from model import LexVLA

STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / "checkpoint.json").is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_partial(output_dir: str | Path) -> None:
    """Delete the leftovers of saves that were interrupted."""
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for path in root.glob(".step-*"):
            shutil.rmtree(path, ignore_errors=True)


def prune(output_dir: str | Path, keep_last: int) -> None:
    for _, path in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    output_dir: str | Path,
    step: int,
    model: LexVLA,
    state: dict[str, Any],
    config_json: str,
    keep_last: int,
) -> Path:
    """Write ``step``'s checkpoint atomically, then drop all but the last ``keep_last``."""
    final = step_dir(output_dir, step)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    (partial / CONFIG_FILE).write_text(config_json)
    torch.save(state, partial / STATE_FILE)
    replace_directory(partial, final)  # the same step saved again (a resumed run) is replaced
    prune(output_dir, keep_last)
    return final


def load_state(path: Path) -> dict[str, Any]:
    """The training state of a checkpoint folder (optimizer, scheduler, positions, RNG)."""
    file = path / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no {STATE_FILE}: it is a model checkpoint, not a training checkpoint; "
            "start a new run from it with model.start instead of resuming"
        )
    return torch.load(file, map_location="cpu", weights_only=False)
