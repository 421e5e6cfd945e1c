"""Losses: InfoNCE with cross-rank gather (checked over 2 gloo processes), FLOPs, overuse,
lexical grounding (text and image)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bench.live import free_port
from model.losses import (
    LexVLALoss,
    QuadraticWarmup,
    contrastive_loss,
    flops_penalty,
    grounding_loss,
    image_grounding_loss,
    overuse_penalty,
)

N, V = 8, 40


def _batch():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.rand(N, V, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.rand(N, V, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def _bow():
    """Unit bag-of-words rows with 1-3 words (one word twice in row 0) and an empty last row."""
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(N, V, dtype=torch.float64)
    for row in range(N - 1):
        words = torch.randperm(V, generator=g)[: 1 + row % 3]
        counts[row, words] = 1.0
    counts[0, 5] = 2.0
    return F.normalize(counts, dim=-1)


def _loss_and_grads(image, text, scale, bow):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    loss = LexVLALoss(
        image_weight=0.1, text_weight=0.2, grounding_weight=0.3, image_grounding_weight=0.4
    )
    out = loss(image, text, scale, bow=bow)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, image.grad, text.grad, scale.grad


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text = _batch()
        part = slice(rank * N // world, (rank + 1) * N // world)
        out, gi, gt, gs = _loss_and_grads(
            image[part], text[part], torch.tensor(2.0, dtype=torch.float64), _bow()[part]
        )
        torch.save({"out": out, "gi": gi, "gt": gt, "gs": gs}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_loss_over_two_processes_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    image, text = _batch()
    ref, gi, gt, gs = _loss_and_grads(image, text, torch.tensor(2.0, dtype=torch.float64), _bow())
    assert "text_grounding_loss" in ref and "image_grounding_loss" in ref
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


def test_grounding_loss_matches_a_direct_computation():
    _, text = _batch()
    bow = _bow()
    expected = []
    for row in range(N):
        counts = bow[row] / bow[row].sum()  # unit rows back to word shares (row 0: 2/3, 1/3)
        if bow[row].sum() == 0:
            continue  # a caption with no vocabulary word is left out of the mean
        log_p = torch.log(torch.exp(100 * text[row]) / torch.exp(100 * text[row]).sum())
        expected.append(-(counts * log_p).sum())
    torch.testing.assert_close(grounding_loss(text, bow), torch.stack(expected).mean())
    torch.testing.assert_close(
        grounding_loss(text, bow, scale=3.0),
        torch.stack(
            [
                -(bow[r] / bow[r].sum() * torch.log_softmax(3.0 * text[r], -1)).sum()
                for r in range(N - 1)
            ]
        ).mean(),
    )
    # lowest when the caption's words score highest; no words at all: zero, gradient intact
    grounded = F.normalize(text + 5 * bow, dim=-1)
    assert grounding_loss(grounded, bow) < grounding_loss(text, bow)
    empty = text.clone().requires_grad_()
    value = grounding_loss(empty, torch.zeros_like(text))
    value.backward()
    assert value == 0 and empty.grad is not None and not empty.grad.any()
    with pytest.raises(ValueError, match="pair up"):
        grounding_loss(text, bow[:3])


def test_grounding_part_and_zero_weight():
    image, text = _batch()
    bow = _bow()
    scale = torch.tensor(2.0, dtype=torch.float64)
    plain = LexVLALoss("overuse", 0.1, 0.2)(image, text, scale)
    off = LexVLALoss("overuse", 0.1, 0.2, grounding_weight=0.0)(image, text, scale, bow=bow)
    assert set(off) == set(plain)  # weight 0: no part, the loss unchanged
    for name, value in plain.items():
        torch.testing.assert_close(off[name], value)
    on = LexVLALoss("overuse", 0.1, 0.2, grounding_weight=0.5)(image, text, scale, step=3, bow=bow)
    assert set(on) == {*plain, "text_grounding_loss"}
    torch.testing.assert_close(on["text_grounding_loss"], 0.5 * grounding_loss(text, bow))
    torch.testing.assert_close(on["loss"], plain["loss"] + on["text_grounding_loss"])
    with pytest.raises(ValueError, match="bag of words"):
        LexVLALoss(grounding_weight=0.5)(image, text, scale)
    with pytest.raises(ValueError, match="non-negative"):
        LexVLALoss(grounding_weight=-1.0)


def test_image_grounding_targets_the_caption_words_its_text_vector_uses():
    image, _ = _batch()
    image = image.requires_grad_()
    bow = _bow()
    threshold = V**-0.5
    # the text vector uses all but the last of each caption's words (1-word captions: that one)
    # and one word outside the caption
    text = torch.zeros(N, V, dtype=torch.float64)
    for row in range(N - 1):
        words = bow[row].nonzero().flatten()
        text[row, words[: max(1, len(words) - 1)]] = 0.5
    text[:, 39] = 0.4
    bow[:, 39] = 0.0
    text = text.requires_grad_()
    expected = []
    for row in range(N):
        words = (bow[row] > 0) & (text[row] > threshold)
        if not words.any():
            continue  # the empty caption: left out of the mean
        target = words.double() / words.sum()
        expected.append(-(target * torch.log_softmax(10 * image[row], -1)).sum())
    value = image_grounding_loss(image, text, bow)
    torch.testing.assert_close(value, torch.stack(expected).mean())
    value.backward()
    assert text.grad is None and image.grad is not None  # the text side is only the teacher
    image = image.detach()
    # an image that has exactly those words, equally, scores lower than one that has one strongly
    target = ((bow > 0) & (text.detach() > threshold)).double()
    balanced = F.normalize(target + 1e-3, dim=-1)
    lopsided = F.normalize(target * torch.linspace(1, 0.1, V, dtype=torch.float64) + 1e-3, dim=-1)
    assert image_grounding_loss(balanced, text, bow) < image_grounding_loss(lopsided, text, bow)
    with pytest.raises(ValueError, match="pair up"):
        image_grounding_loss(image, text, bow[:3])
    scale = torch.tensor(2.0, dtype=torch.float64)
    on = LexVLALoss(image_grounding_weight=0.5)(image, text.detach(), scale, bow=bow)
    assert "text_grounding_loss" not in on
    torch.testing.assert_close(
        on["image_grounding_loss"], 0.5 * image_grounding_loss(image, text.detach(), bow)
    )
    with pytest.raises(ValueError, match="non-negative"):
        LexVLALoss(image_grounding_weight=-1.0)
