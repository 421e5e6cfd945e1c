"""The shared-prefix training step: the full-prompt step's loss and gradients (float32, tight).

The prompt prefix's keys and values are computed once per step and the batch reads them through
an expanded view, so their gradient must be the sum of every sample's, with and without gradient
checkpointing (whose recompute must see the same prefix), in LoRA and full fine-tuning.
"""

import pytest
import torch

from model import LexVLA
from model.losses import LexVLALoss
from model.tiny import materialize_tiny, tiny_config
from training.module import TrainModule
from training.setup import enable_gradient_checkpointing

CAPTIONS = [
    "a red circle",
    "a large blue square left of a small green star",
    "two dogs",
    "grass " * 80,  # longer than max_caption_tokens: truncated, the longest row
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is faster
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """The tiny tokenizer and backbones, written once for every model of this module."""
    config = tiny_config(3, {"image.image_size": 56})
    return materialize_tiny(config, tmp_path_factory.mktemp("bases"))


def _model(bases, mode: str, checkpointing: bool):
    torch.manual_seed(3)
    model = LexVLA.from_config(bases.with_overrides({"text.train_mode": mode}))
    with torch.no_grad():  # LoRA's B starts at zero: make the prefix depend on LoRA
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def _loss_and_grads(model, module, pixels, shared: bool):
    model.text.use_prefix_cache = shared
    model.zero_grad(set_to_none=True)
    out = module(pixels, CAPTIONS)
    loss = LexVLALoss(warmup_steps=0)(out["image"], out["text"], out["logit_scale"])["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    ("mode", "checkpointing"), [("lora", True), ("lora", False), ("full", True)]
)
def test_shared_prefix_step_equals_the_full_prompt_step(bases, mode, checkpointing):
    model = _model(bases, mode, checkpointing)
    module = TrainModule(model).train()
    pixels = torch.randn(len(CAPTIONS), 3, 56, 56, generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, module, pixels, shared=True)
    ref_loss, ref_grads = _loss_and_grads(model, module, pixels, shared=False)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == ref_grads.keys()
    text = [n for n in grads if n.startswith("text.")]
    assert text and all(grads[n].abs().sum() > 0 for n in text)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-7, rtol=1e-4, msg=name)


def test_the_comparison_catches_a_prefix_without_gradient(bases, monkeypatch):
    """A prefix detached from the graph (what a per-run cache would be) gives other gradients."""
    import model.text_encoder as text_encoder

    model = _model(bases, "lora", checkpointing=False)
    module = TrainModule(model).train()
    pixels = torch.randn(len(CAPTIONS), 3, 56, 56, generator=torch.Generator().manual_seed(0))
    ref_loss, ref_grads = _loss_and_grads(model, module, pixels, shared=False)
    original = text_encoder.prefix_keys_values

    def detached(*args, **kwargs):
        kv = original(*args, **kwargs)
        return type(kv)([k.detach() for k in kv.keys], [v.detach() for v in kv.values])

    monkeypatch.setattr(text_encoder, "prefix_keys_values", detached)
    loss, grads = _loss_and_grads(model, module, pixels, shared=True)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)  # the forward is the same
    lora_b = [n for n in grads if "lora_B" in n]
    worst = max(float((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()) for n in lora_b)
    assert worst > 1e-2  # far outside the tolerance of the test above


def test_training_config_chooses_the_path(tmp_path):
    from training.config import TrainConfig
    from training.distributed import DistInfo
    from training.setup import build_model

    info = DistInfo(0, 0, 1, torch.device("cpu"))
    for shared in (True, False):
        config = TrainConfig.model_validate(
            {"output_dir": str(tmp_path / str(shared)), "model": {"shared_prefix": shared}}
        )
        assert build_model(config, info, None)[0].text.use_prefix_cache is shared
