"""The tiny model learns synthetic shapes on a CPU in a few minutes (the ``tiny-shapes`` preset).

What makes a random tiny model learn (see ``training.config.PRESETS``): its DINOv2 is random and
frozen, so everything visual is learnt by the adapter and the visual codebook from random
features, at rates 20x the paper's; the whole tiny Llama trains (``text.train_mode = full``, at
4e-3, weights initialised at std 0.1); 112 px images (8x8 patches) give four times the samples
per second of 224 px for the same learning per sample; no flips (they would make "left of"
captions false); a high temperature learning rate lets the logit scale grow quickly towards
CLIP's cap of 100. The lexical grounding loss (``loss.grounding``, ours) makes the random
Llama's words the captions' words, as a pretrained Llama's would be.

The measurements behind these settings and the bounds below (and the grounding losses that were
compared) are in ``docs/lab-notes.md``; the bounds leave a wide margin for other machines and
library versions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from model import LexVLA, bag_of_words
from training.config import load_config
from training.data.shape_language import COLOURS
from training.evaluation import evaluate
from training.evaluation.datasets import eval_dataset
from training.loop import train

HELD_OUT = 200


def top_words(model: LexVLA, vectors: torch.Tensor, k: int) -> list[list[str]]:
    return [[model.vocabulary.words[j] for j in row.topk(k).indices] for row in vectors]


def grounding(model: LexVLA, seed: int) -> dict[str, float]:
    """How meaningful the words are on the held-out set: the share of each caption's top-5 text
    words that are words of that caption, and the share of images whose top word is one of
    their colours."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = eval_dataset(
            f"shapes:{HELD_OUT}", image_size=model.config.image.image_size, seed=seed
        )
        items = [dataset[i] for i in range(HELD_OUT)]
        captions = [c for item in items for c in item["captions"]]
        with torch.inference_mode():
            texts = torch.cat(
                [model.encode_texts(captions[i : i + 64]) for i in range(0, len(captions), 64)]
            )
            images = torch.cat(
                [
                    model.encode_pil([it["image"] for it in items[i : i + 50]])
                    for i in range(0, HELD_OUT, 50)
                ]
            )
    finally:
        torch.set_num_threads(threads)
    in_caption = bag_of_words(captions, model.text.tokenizer, model.vocabulary) > 0
    text_top5 = in_caption.gather(1, texts.topk(5).indices).float().mean().item()
    colour_first = sum(
        top[0] in COLOURS and top[0] in " ".join(item["captions"]).split()
        for top, item in zip(top_words(model, images, 1), items, strict=True)
    )
    return {"text_top5_in_caption": text_top5, "image_top_word_own_colour": colour_first / HELD_OUT}


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
    trained = LexVLA.from_pretrained(summary["checkpoint"]).eval()
    query = top_words(trained, trained.encode_texts(["a red circle"]), 8)[0]
    words = grounding(trained, config.eval.seed)
    print(f'"a red circle": {" ".join(query)}; {words}')
    chance = 100 / HELD_OUT
    assert t2i > 10 * chance and i2t > 10 * chance
    assert result["retrieval"]["top-16"]["text_to_image"]["R@5"] > 10 * 5 * chance
    assert colour["miou"] > 5 * colour["chance_miou_uniform"] and colour["miou"] > 0.5
    # the words mean something (grounding): measured top 3 and 0.73, 1.0
    assert {"red", "circle"} <= set(query[:5])
    assert words["text_top5_in_caption"] > 0.5
    assert words["image_top_word_own_colour"] > 0.7
    # the same evaluation of the untrained start is at chance: the gain is the training's
    untrained = LexVLA.from_config(trained.config)
    before = evaluate(untrained, config.eval)
    assert before["retrieval"]["threshold"]["text_to_image"]["R@1"] < 4 * chance
    assert before["patchdis"]["colour"]["miou"] < 0.3
    assert grounding(untrained, config.eval.seed)["text_top5_in_caption"] < 0.2
