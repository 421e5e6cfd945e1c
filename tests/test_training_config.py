"""Training config, optimiser groups, schedule, and the training module's ablations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from model import bag_of_words
from training.config import PRESETS, load_config, parse_assignments
from training.module import TrainModule, keep_top_k
from training.optim import build_scheduler, cosine_with_warmup, group_learning_rates, param_groups


def test_defaults_file_preset_and_dotted_overrides(tmp_path: Path) -> None:
    default = load_config()
    assert default.optim.lr_adapter == default.optim.lr_visual_codebook == 1e-4
    assert default.optim.lr_lora == 2e-4 and default.loss.penalty == "overuse"
    assert default.loss.lambda_image == default.loss.lambda_text == 1e-3
    assert default.reg_warmup_steps == 100 and default.warmup_steps == 50  # of 1000 steps
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"steps": 10, "optim": {"lr_lora": 1e-5}}))
    overrides = parse_assignments(
        [
            "batch_size=8",
            "loss.penalty=flops",
            "eval.top_k=[4, 2]",
            "model.overrides.text.lora_rank=2",
        ]
    )
    config = load_config(path, overrides)
    assert (config.steps, config.optim.lr_lora, config.batch_size) == (10, 1e-5, 8)
    assert config.loss.penalty == "flops" and config.eval.top_k == [4, 2]
    assert config.model.overrides == {"text.lora_rank": 2}
    assert (
        load_config("tiny-shapes").model.overrides == PRESETS["tiny-shapes"]["model"]["overrides"]
    )
    with pytest.raises(ValidationError):
        load_config(None, {"optim.lr_adaptr": 1.0})
    with pytest.raises(ValidationError):
        load_config(None, {"loss.penalty": "l1"})
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["steps"])


def test_parameter_groups_rates_and_decay(tiny_checkpoint, tiny_lora_checkpoint) -> None:
    from model import LexVLA

    config = load_config()
    full = LexVLA.from_pretrained(tiny_checkpoint, trainable=True)
    groups = {g["name"]: g for g in param_groups(full, config.optim)}
    assert groups["temperature/no_decay"]["weight_decay"] == 0.0
    assert "temperature" not in groups  # the temperature is never decayed
    assert groups["visual_codebook"]["weight_decay"] == config.optim.weight_decay
    no_decay = {id(p) for p in groups["adapter/no_decay"]["params"]}
    adapter = full.image.adapter
    assert id(adapter.norm1.weight) in no_decay and id(adapter.fc1.bias) in no_decay
    assert id(adapter.fc1.weight) not in no_decay
    assert groups["text"]["lr"] == config.optim.lr_text_full  # the tiny preset trains Llama fully
    lora = LexVLA.from_pretrained(tiny_lora_checkpoint, trainable=True)
    assert group_learning_rates(lora, config.optim)["text"] == config.optim.lr_lora
    lora_groups = {g["name"]: g for g in param_groups(lora, config.optim)}
    assert all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad and "text" in n)
    assert lora_groups["text"]["lr"] == 2e-4


def test_cosine_schedule_with_warmup() -> None:
    assert cosine_with_warmup(0, 4, 20) == 0.25 and cosine_with_warmup(3, 4, 20) == 1.0
    assert cosine_with_warmup(4, 4, 20) == 1.0
    assert cosine_with_warmup(12, 4, 20) == pytest.approx(0.5)
    assert cosine_with_warmup(20, 4, 20) == pytest.approx(0.0)
    assert cosine_with_warmup(20, 4, 20, floor=0.1) == pytest.approx(0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 2.0, "name": "x"}])
    scheduler = build_scheduler(optimizer, 2, 10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == [1.0, 2.0, 2.0] and rates[-1] < 0.1


def test_top_k_keeps_the_largest_entries_with_their_gradient() -> None:
    x = torch.tensor([[0.125, 0.5, 0.25, 0.75]], requires_grad=True)
    kept = keep_top_k(x, 2)
    assert kept.tolist() == [[0.0, 0.5, 0.0, 0.75]]
    kept.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert keep_top_k(x, None) is x


def test_bag_of_words_ablation_freezes_the_text_side(tiny_checkpoint) -> None:
    from model import LexVLA

    model = LexVLA.from_pretrained(tiny_checkpoint, trainable=True)
    module = TrainModule(model, text_side="bow", top_k=8).train()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert not model.text.training and model.image.adapter.training
    captions = ["a red circle", "a large blue square"]
    pixels = torch.zeros(2, 3, model.config.image.image_size, model.config.image.image_size)
    out = module(pixels, captions)
    torch.testing.assert_close(
        out["text"], bag_of_words(captions, model.text.tokenizer, model.vocabulary)
    )
    assert int((out["image"] > 0).sum(dim=1).max()) <= 8
    with pytest.raises(ValueError, match="text_side"):
        TrainModule(model, text_side="clip")


def test_grounding_setting_reaches_the_loss(tiny_checkpoint) -> None:
    from model import LexVLA
    from model.losses import LexVLALoss
    from training.loop import grounding_weight
    from training.step import forward_loss

    assert load_config().loss.grounding == 0.0  # off unless asked for
    # tiny-shapes pretrains its text backbone instead (training.pretrain.text)
    assert load_config("tiny-shapes").loss.grounding == 0.0
    preset = load_config("tiny-shapes", {"loss.grounding": 0.5})
    assert grounding_weight(preset) == 0.5
    # the BoW ablation's text vector is the bag of words itself: nothing to ground
    bow = {"data.text_side": "bow", "loss.grounding": 0.5}
    assert grounding_weight(load_config("tiny-shapes", bow)) == 0.0
    with pytest.raises(ValidationError):
        load_config(None, {"loss.grounding": -1.0})
    model = LexVLA.from_pretrained(tiny_checkpoint, trainable=True)
    captions = ["a red circle", "a large blue square"]
    pixels = torch.zeros(2, 3, model.config.image.image_size, model.config.image.image_size)
    assert "bow" not in TrainModule(model)(pixels, captions)
    module = TrainModule(model, bow=True).train()
    out = module(pixels, captions)
    torch.testing.assert_close(
        out["bow"], bag_of_words(captions, model.text.tokenizer, model.vocabulary)
    )
    assert not out["bow"].requires_grad
    loss_fn = LexVLALoss(grounding_weight=0.5)
    parts = forward_loss(module, loss_fn, pixels, captions, 0, model.device, "fp32")
    assert parts["text_grounding_loss"] > 0
    parts["text_grounding_loss"].backward()  # the grounding trains the text side
    assert any(p.grad is not None and p.grad.any() for p in model.text.backbone.parameters())
