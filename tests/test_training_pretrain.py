"""training.pretrain: the tiny backbones pretrained on shapes, cached by their inputs.

What the full pretraining reaches is asserted through the demo (tests/test_demo.py); here a few
steps check the labels, the cache and the config that names the pretrained bases.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import load_preset
from model.tiny import materialize_tiny
from training.config import PretrainSettings
from training.pretrain import REPORT, pretrain_backbones
from training.pretrain.image import patch_shares
from training.pretrain.text import caption_stream


def test_patch_shares_count_each_label_per_patch():
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[0, 0] = 2  # one pixel of label 2 in the top-left 2x2 patch
    mask[2:, 2:] = 1  # the whole bottom-right patch is label 1
    shares = patch_shares(mask, patch=2, classes=3)
    assert shares.shape == (4, 3)
    np.testing.assert_allclose(shares.sum(1), 1.0)
    np.testing.assert_allclose(shares[0], [0.75, 0.0, 0.25])
    np.testing.assert_allclose(shares[3], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(shares[1], [1.0, 0.0, 0.0])


def test_caption_stream_is_a_pure_function_of_its_seed():
    a, b, c = caption_stream(0, "pretrain"), caption_stream(0, "pretrain"), caption_stream(1, "x")
    first = [next(a) for _ in range(20)]
    assert first == [next(b) for _ in range(20)]
    assert first != [next(c) for _ in range(20)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    config = load_preset("tiny").with_overrides(
        {"image.image_size": 56, "image.arch.image_size": 56}
    )
    return materialize_tiny(config, tmp_path_factory.mktemp("bases"))


def test_pretraining_names_new_bases_and_is_reused(tmp_path, base):
    settings = PretrainSettings.model_validate(
        {"image": {"steps": 3, "batch_size": 4}, "text": {"steps": 3, "batch_size": 4},
         "num_workers": 0}
    )  # fmt: skip
    config, reports = pretrain_backbones(base, settings, tmp_path)
    assert set(reports) == {"image", "text"}
    assert config.image.base != base.image.base and config.text.base != base.text.base
    assert config.text.tokenizer is None  # the pretrained text folder holds its tokenizer
    for side in ("image", "text"):
        report = reports[side]
        assert report["reused"] is False and report["inputs"]["settings"]["steps"] == 3
        saved = json.loads((tmp_path / report["path"].split("/")[-1] / REPORT).read_text())
        assert saved["seconds"] == report["seconds"]
    accuracy = reports["image"]["heldout_patch_accuracy"]
    assert set(accuracy) == {"kind", "colour", "size"} and all(
        0 <= v <= 1 for v in accuracy.values()
    )
    # the same inputs: the cached folders, nothing trained
    again, reused = pretrain_backbones(base, settings, tmp_path)
    assert again == config and all(r["reused"] for r in reused.values())
    # other settings: their own folder
    more = settings.model_copy(update={"image": settings.image.model_copy(update={"steps": 4})})
    other, _ = pretrain_backbones(
        base, more.model_copy(update={"text": more.text.model_copy(update={"steps": 0})}), tmp_path
    )
    assert other.image.base != config.image.base and other.text.base == base.text.base
