"""save_pretrained / from_pretrained: identical outputs, and clear errors for bad checkpoints."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from model import CheckpointError, LexVLA, Vocabulary, VocabularyMismatchError


def _perturbed(path):
    """Load a checkpoint and perturb every trained part so a lossy round trip would show."""
    model = LexVLA.from_pretrained(path, trainable=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _outputs(model):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (230, 260, 3), dtype=np.uint8))
    return model.encode_texts(["a small red star", "grass"]), model.encode_pil([image])


@pytest.mark.parametrize("which", ["tiny_checkpoint", "tiny_lora_checkpoint"])
def test_save_then_load_gives_identical_outputs(which, request, tmp_path):
    model = _perturbed(request.getfixturevalue(which))
    before = _outputs(model)
    out = model.save_pretrained(tmp_path / "saved")
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["checkpoint_id"] == model.checkpoint_id
    assert meta["vocabulary_hash"] == model.vocabulary.hash
    loaded = LexVLA.from_pretrained(out)
    assert loaded.checkpoint_id == model.checkpoint_id
    for a, b in zip(before, _outputs(loaded), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loaded.logit_scale, model.logit_scale)
    # the checkpoint is self-contained (tiny bases embedded) and relocatable
    moved = shutil.move(str(out), str(tmp_path / "moved"))
    relocated = LexVLA.from_pretrained(moved)
    torch.testing.assert_close(_outputs(relocated)[0], before[0], atol=1e-6, rtol=1e-5)


def test_lora_checkpoint_is_in_peft_format(tiny_lora_checkpoint):
    cfg = json.loads((tiny_lora_checkpoint / "text_lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_missing_and_incomplete_checkpoints(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        LexVLA.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        LexVLA.from_pretrained(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "lexvla.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: missing lexvla\.safetensors"):
        LexVLA.from_pretrained(broken)


def test_weights_that_do_not_fit_the_config_are_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["image"]["adapter_mlp_ratio"] = 3.0
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        LexVLA.from_pretrained(broken)


def test_vocabulary_that_does_not_match_the_checkpoint(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    vocab = Vocabulary.load(broken)
    Vocabulary(vocab.token_ids[:-1].tolist(), vocab.pieces[:-1]).save(broken)
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"):
        LexVLA.from_pretrained(broken)
    data = json.loads((broken / "vocabulary.json").read_text())
    data["hash"] = "0" * 64
    (broken / "vocabulary.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        LexVLA.from_pretrained(broken)


def test_unreachable_base_model_names_the_problem(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    shutil.rmtree(broken / "bases" / "image")
    with pytest.raises(Exception, match="could not load the image backbone"):
        LexVLA.from_pretrained(broken)
