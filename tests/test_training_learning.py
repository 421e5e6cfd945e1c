"""The tiny model learns synthetic shapes on a CPU in a few minutes (the ``tiny-shapes`` preset).

What makes a random tiny model learn (see ``training.config.PRESETS``): its DINOv2 is random and
frozen, so everything visual is learnt by the adapter and the visual codebook from random
features, at rates 20x the paper's; the whole tiny Llama trains (``text.train_mode = full``);
112 px images (8x8 patches) give four times the samples per second of 224 px for the same
learning per sample; no flips (they would make "left of" captions false); a high temperature
learning rate lets the logit scale grow quickly towards CLIP's cap of 100.

Measured on a shared 2-core CPU (2026-11-23), 400 steps of 32 (12.8k samples, ~90 s): on 200
held-out images, text->image R@1 20.8% and image->text R@1 29.0% (chance 0.5%); PatchDis mIoU
0.918 over the 8 colours (uniform chance 0.066) but 0.080 over the 5 shape kinds (chance 0.111:
random frozen features in 14 px patches do not tell a circle's patch from a square's). The
bounds below leave a wide margin for other machines and library versions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from model import LexVLA
from training.config import load_config
from training.evaluation import evaluate
from training.loop import train

HELD_OUT = 200


@pytest.mark.slow
def test_tiny_model_learns_shapes_far_above_chance(tmp_path: Path) -> None:
    config = load_config(
        "tiny-shapes",
        {
            "output_dir": str(tmp_path),
            "cpu_threads": 1,
            "progress": False,
            "eval.data": f"shapes:{HELD_OUT}",
            "eval.top_k": [16],
        },
    )
    start = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - start
    result = summary["eval"]
    retrieval = result["retrieval"]["threshold"]
    t2i, i2t = retrieval["text_to_image"]["R@1"], retrieval["image_to_text"]["R@1"]
    colour, kind = result["patchdis"]["colour"], result["patchdis"]["kind"]
    print(
        f"\ntiny-shapes: {summary['step']} steps in {seconds:.0f} s; held-out R@1 "
        f"T2I {t2i:.1f}% I2T {i2t:.1f}% (chance {100 / HELD_OUT:.1f}%); PatchDis mIoU colour "
        f"{colour['miou']:.3f} kind {kind['miou']:.3f} (chance {colour['chance_miou_uniform']:.3f}"
        f" / {kind['chance_miou_uniform']:.3f}); {retrieval['active_words_image']:.0f} words/image"
    )
    chance = 100 / HELD_OUT
    assert t2i > 10 * chance and i2t > 10 * chance
    assert result["retrieval"]["top-16"]["text_to_image"]["R@5"] > 10 * 5 * chance
    assert colour["miou"] > 5 * colour["chance_miou_uniform"] and colour["miou"] > 0.5
    # the same evaluation of the untrained start is at chance: the gain is the training's
    untrained = LexVLA.from_config(LexVLA.from_pretrained(summary["checkpoint"]).config)
    before = evaluate(untrained, config.eval)
    assert before["retrieval"]["threshold"]["text_to_image"]["R@1"] < 4 * chance
    assert before["patchdis"]["colour"]["miou"] < 0.3
