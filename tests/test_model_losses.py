"""Losses: InfoNCE with cross-rank gather (checked over 2 gloo processes), FLOPs, overuse."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.losses import (
    LexVLALoss,
    QuadraticWarmup,
    contrastive_loss,
    flops_penalty,
    overuse_penalty,
)

N, V = 8, 40


def _batch():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.rand(N, V, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.rand(N, V, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def _loss_and_grads(image, text, scale):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    out = LexVLALoss(image_weight=0.1, text_weight=0.2)(image, text, scale)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, image.grad, text.grad, scale.grad


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text = _batch()
        part = slice(rank * N // world, (rank + 1) * N // world)
        out, gi, gt, gs = _loss_and_grads(
            image[part], text[part], torch.tensor(2.0, dtype=torch.float64)
        )
        torch.save({"out": out, "gi": gi, "gt": gt, "gs": gs}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_over_two_processes_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    image, text = _batch()
    ref, gi, gt, gs = _loss_and_grads(image, text, torch.tensor(2.0, dtype=torch.float64))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, res in enumerate(ranks):
        for name, value in ref.items():  # every named part equals the global-batch value
            torch.testing.assert_close(res["out"][name], value)
        part = slice(r * N // 2, (r + 1) * N // 2)
        torch.testing.assert_close(res["gi"], gi[part])  # the local slice keeps its gradient
        torch.testing.assert_close(res["gt"], gt[part])
    # parameters shared by all ranks: per-rank gradients sum to the single-process gradient
    torch.testing.assert_close(ranks[0]["gs"] + ranks[1]["gs"], gs)


def test_contrastive_loss_matches_a_direct_computation():
    image, text = _batch()
    scale = torch.tensor(1.5, dtype=torch.float64)
    logits = scale.exp() * image @ text.T
    labels = torch.arange(N)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(contrastive_loss(image, text, scale), expected)
    # the temperature is clamped at 100 as in CLIP
    big = contrastive_loss(image, text, torch.tensor(10.0, dtype=torch.float64))
    capped = contrastive_loss(image, text, torch.log(torch.tensor(100.0, dtype=torch.float64)))
    torch.testing.assert_close(big, capped)
    with pytest.raises(ValueError, match="pair up"):
        contrastive_loss(image, text[:3], scale)


def test_overuse_penalty_punishes_a_word_switched_on_everywhere():
    w = 0.5
    everywhere = torch.zeros(N, V)
    everywhere[:, 0] = w  # one word on in every sample
    spread = torch.zeros(N, V)
    spread[torch.arange(N), torch.arange(N)] = w  # the same mass, each sample its own word
    assert everywhere.sum() == spread.sum()
    assert overuse_penalty(everywhere) == pytest.approx(w**2)
    assert overuse_penalty(spread) == pytest.approx(w**2 / N**2)
    assert flops_penalty(everywhere) == pytest.approx(w**2)
    assert flops_penalty(spread) == pytest.approx(w**2 / N)
    # the overuse penalty separates the two cases N times more sharply than FLOPs
    ratio_op = overuse_penalty(everywhere) / overuse_penalty(spread)
    ratio_flops = flops_penalty(everywhere) / flops_penalty(spread)
    assert ratio_op == pytest.approx(N * ratio_flops)


def test_named_parts_and_penalty_choice():
    image, text = _batch()
    scale = torch.tensor(2.0, dtype=torch.float64)
    op = LexVLALoss("overuse", 0.1, 0.2)(image, text, scale)
    assert set(op) == {"loss", "contrastive_loss", "image_overuse_loss", "text_overuse_loss"}
    torch.testing.assert_close(op["image_overuse_loss"], 0.1 * overuse_penalty(image))
    torch.testing.assert_close(
        op["loss"], op["contrastive_loss"] + op["image_overuse_loss"] + op["text_overuse_loss"]
    )
    fl = LexVLALoss("flops", 0.1, 0.2)(image, text, scale)
    torch.testing.assert_close(fl["text_flops_loss"], 0.2 * flops_penalty(text))
    none = LexVLALoss("none")(image, text, scale)
    assert set(none) == {"loss", "contrastive_loss"}
    with pytest.raises(ValueError, match="unknown penalty"):
        LexVLALoss("l1")  # type: ignore[arg-type]


def test_quadratic_warmup():
    w = QuadraticWarmup(1e-3, 100)
    assert w(0) == 0.0
    assert w(50) == pytest.approx(1e-3 * 0.25)
    assert w(100) == pytest.approx(1e-3) and w(1000) == pytest.approx(1e-3)
    assert QuadraticWarmup(2.0, 0)(0) == 2.0
    # during warm-up the regulariser part scales with the schedule
    image, text = _batch()
    loss = LexVLALoss("overuse", 1.0, 1.0, warmup_steps=10)
    scale = torch.tensor(2.0, dtype=torch.float64)
    torch.testing.assert_close(
        loss(image, text, scale, step=5)["image_overuse_loss"], 0.25 * overuse_penalty(image)
    )
