"""DDP: two gloo processes give the loss, gradients and updates of one process (same global batch).

Both go through the real training step (``training.step.train_step``) on a tiny LoRA model with
gradient checkpointing, DDP-wrapped in the two-process case, with the overuse penalty and the
lexical grounding loss (its bag-of-words rows built per rank, then gathered) weighted up so that
their cross-rank gradients matter too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bench.live import free_port
from model import LexVLA
from model.losses import LexVLALoss
from model.tiny import create_tiny_checkpoint
from training import distributed
from training.config import OptimSettings
from training.data import ShapesDataset, collate
from training.module import TrainModule, wrap_ddp
from training.optim import build_optimizer
from training.setup import enable_gradient_checkpointing
from training.step import train_step

BATCH, STEPS, SIZE = 8, 2, 56


def _global_batch() -> tuple[torch.Tensor, list[str]]:
    data = ShapesDataset(BATCH, seed=3, image_size=SIZE)
    batch = collate([data[i] for i in range(BATCH)], image_size=SIZE, train=True, seed=3)
    return batch["pixel_values"], batch["captions"]


def run_steps(checkpoint: str, rank: int, world: int) -> dict:
    """``STEPS`` training steps on this rank's slice of the global batch."""
    torch.manual_seed(0)
    model = LexVLA.from_pretrained(checkpoint, trainable=True)
    assert enable_gradient_checkpointing(model)
    module = TrainModule(model, bow=True).train()
    wrapped = wrap_ddp(module, torch.device("cpu")) if world > 1 else module
    optimizer = build_optimizer(model, OptimSettings(lr_adapter=1e-2, lr_visual_codebook=1e-2))
    loss_fn = LexVLALoss("overuse", image_weight=0.5, text_weight=0.5, grounding_weight=0.5)
    pixels, captions = _global_batch()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    records = []
    for step in range(STEPS):
        result = train_step(
            wrapped, loss_fn, optimizer, None, pixels[part], captions[part], step,
            device=torch.device("cpu"), world_size=world, clip_norm=None,
        )  # fmt: skip
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        records.append({"result": result, "grads": grads})
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"records": records, "params": params}


def _worker(rank: int, world: int, port: int, checkpoint: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    assert info.world_size == world and info.rank == rank
    try:
        torch.save(run_steps(checkpoint, rank, world), f"{out}/rank{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "tiny-lora"
    overrides = {"text.train_mode": "lora", "image.image_size": SIZE}
    return create_tiny_checkpoint(path, seed=2, overrides=overrides)


def test_two_gloo_processes_match_one_process(lora_checkpoint: Path, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(lora_checkpoint), str(tmp_path)), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_steps(str(lora_checkpoint), 0, 1)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    names = {n for n in single["records"][0]["grads"]}
    assert any("lora_" in n for n in names) and "image.codebook" in names
    assert "logit_scale" in names and any(n.startswith("image.adapter") for n in names)
    for step in range(STEPS):
        ref = single["records"][step]
        for res in ranks:
            got = res["records"][step]
            for part in (
                "loss", "contrastive_loss", "image_overuse_loss", "text_overuse_loss",
                "text_grounding_loss",
            ):  # fmt: skip
                assert got["result"][part] == pytest.approx(ref["result"][part], rel=1e-5)
            assert got["grads"].keys() == ref["grads"].keys()
            for name, grad in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6)
    # The same updates (to float noise, which Adam's g / sqrt(v) can lift to ~1e-3 of the lr on
    # near-zero gradients): the ranks stay in sync with each other and with the single process.
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=0)
    for name, value in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-4, atol=2e-5)


def test_gradient_checkpointing_gives_the_same_gradients(lora_checkpoint: Path) -> None:
    pixels, captions = _global_batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = LexVLA.from_pretrained(lora_checkpoint, trainable=True)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        out = TrainModule(model)(pixels, captions)
        LexVLALoss()(out["image"], out["text"], out["logit_scale"])["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    lora = [n for n in grads[0] if "lora_" in n]
    assert lora and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def _run_worker(rank: int, world: int, port: int, settings: dict, out: str) -> None:
    """A whole run under a 2-process group: 2 steps, then a resumed run to step 3."""
    from training.config import load_config
    from training.loop import train

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    distributed.setup("cpu")
    try:
        first = train(load_config("tiny-shapes", settings | {"steps": 2}))
        second = train(load_config("tiny-shapes", settings | {"steps": 3}))
        torch.save({"first": first, "second": second}, f"{out}/run{rank}.pt")
    finally:
        distributed.cleanup()


def test_a_ddp_run_checkpoints_and_resumes(tmp_path: Path) -> None:
    from training import checkpoints

    settings = {
        "output_dir": str(tmp_path / "run"), "model.overrides.image.image_size": SIZE,
        "data.train": "shapes:16", "data.num_workers": 0, "batch_size": 4, "log_every": 1,
        "checkpoint.every": 2, "cpu_threads": 1, "progress": False, "eval.data": None,
        # a trained DINOv2 has an unused parameter (mask_token): DDP's find_unused_parameters
        "model.overrides.image.train_backbone": True,
        # rank 0 pretrains the backbones (2 steps each), every rank gets them
        "pretrain.image.steps": 2, "pretrain.text.steps": 2, "pretrain.num_workers": 0,
        # rank 0 distils the query table after the last step (2 steps), the others wait for it
        "query_table.steps": 2, "query_table.batch_size": 4,
    }  # fmt: skip
    mp.spawn(_run_worker, args=(2, free_port(), settings, str(tmp_path)), nprocs=2)
    runs = [torch.load(tmp_path / f"run{r}.pt", weights_only=False) for r in range(2)]
    assert runs[0]["second"]["start_step"] == 2 and runs[0]["second"]["step"] == 3
    for key in ("first", "second"):  # the loss of the global batch, the same on both ranks
        assert runs[0][key]["last"]["loss"] == runs[1][key]["last"]["loss"]
    state = checkpoints.load_state(checkpoints.step_dir(tmp_path / "run", 3))
    assert state["world_size"] == 2 and len(state["data"]) == 2 and len(state["rng"]) == 2
    assert [d["consumed"] for d in state["data"]] == [6, 6]  # 3 steps of 2 samples per rank
