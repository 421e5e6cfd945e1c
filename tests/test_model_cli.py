"""``lexvla model`` and ``lexvla encode``."""

import json

import numpy as np
import pytest
from PIL import Image

from lexvla.cli import main


def test_params_of_the_paper_sized_preset(capsys):
    assert main(["model", "params", "--preset", "lexvla-7b", "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)
    assert parts["visual codebook"]["params"] == 17234 * 4096  # 70.6M (paper: 70M)
    assert round(parts["adapter"]["params"] / 1e6, 1) == 16.8  # paper: 17M
    assert parts["LoRA"]["params"] == 20_971_520  # paper: 21M
    assert round(parts["trainable"]["params"] / 1e6, 1) == 108.4
    assert parts["image backbone (DINOv2)"]["trainable"] is False
    assert parts["total"]["params"] == parts["trainable"]["params"] + parts["frozen"]["params"]


def test_params_human_readable(capsys):
    assert main(["model", "params", "--preset", "lexvla-7b"]) == 0
    out = capsys.readouterr().out
    assert "visual codebook" in out and "70.59M" in out and "20.97M" in out


def test_encode_text_and_image(tiny_checkpoint, tmp_path, capsys):
    assert (
        main(
            [
                "encode",
                "text",
                "a red circle",
                "--checkpoint",
                str(tiny_checkpoint),
                "--json",
                "--top",
                "5",
            ]
        )
        == 0
    )
    [res] = json.loads(capsys.readouterr().out)
    weights = list(res["top_words"].values())
    assert res["input"] == "a red circle" and len(weights) == 5 and res["active_words"] > 5
    assert weights == sorted(weights, reverse=True)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
        image
    )
    assert main(["encode", "image", str(image), "--checkpoint", str(tiny_checkpoint)]) == 0
    assert "active words" in capsys.readouterr().out


def test_encode_with_a_bad_checkpoint_or_image_says_what_is_wrong(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint directory"):
        main(["encode", "text", "dog", "--checkpoint", str(tmp_path / "missing")])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["encode", "image", str(bad), "--checkpoint", str(tiny_checkpoint)])


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
