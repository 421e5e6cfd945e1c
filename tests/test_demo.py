"""``lexvla demo --no-serve``: the main job, start to finish, judged by its evaluation's numbers.

The demo runs once for the suite with its default recipe (the ``full_demo`` fixture): both
backbones pretrained on shapes, LexVLA trained on top, 300 held-out images indexed and measured
by ``lexvla.demo_eval``. The bounds are the project's targets where the demo meets them, with a
margin below what was measured (docs/results-demo.md). The numbers repeat for a seed on one
machine, but not across processors: torch's CPU kernels round differently with AVX-512 than with
AVX2, and the tiny model's training drifts from there, so the margin is for other machines too.
"""

import json

import pytest

from lexvla.demo import main

# the first test to read the demo waits for its run (conftest.full_demo, itself limited to 2400 s)
pytestmark = pytest.mark.timeout(3000)


def test_demo_numbers(full_demo):
    work, out = full_demo
    assert "pretrained the image backbone: 2000 steps" in out
    assert "pretrained the text backbone: 600 steps" in out and "trained 400 steps" in out
    metrics = json.loads((work / "metrics.json").read_text())
    s = metrics["summary"]
    assert metrics["retrieval"]["images"] == 300
    # retrieval at the paper's threshold (chance 0.3%); measured 72.0 / 69.7
    assert s["text_to_image_r1"] >= 60 and s["image_to_text_r1"] >= 55
    # words in the right place: PatchDis over shape kinds and colours; measured 0.85 / 1.00
    assert s["patchdis_kind_miou"] >= 0.6 and s["patchdis_colour_miou"] >= 0.9
    # the right words: mass on words in no caption, active words; measured 0.0%, 0.9%
    assert s["image_mass_off_captions"] <= 0.1 and s["text_mass_off_captions"] <= 0.1
    assert s["active_share_per_image"] <= 0.05
    red = metrics["red_circle"]
    assert all(set(h["top_words"]) == {"red", "circle"} for h in red["hits"])
    # a bag of words cannot bind colours to kinds: all 5 show red and a circle, 4 a red circle
    assert red["red_and_circle_in_top5"] == 5 and red["red_circles_in_top5"] >= 4
    # re-ranked by where the words are (one patch with both): never fewer red circles than the
    # bag of words, 5 of 5 on one machine and 4 of 5 on another (the model's own mistakes stay)
    bound = metrics["red_circle_bound"]
    assert bound["red_circles_in_top5"] >= max(4, red["red_circles_in_top5"])
    assert bound["red_and_circle_lead_every_hit"]
    assert metrics["no_star"]["hits"] == 10 and metrics["no_star"]["with_star"] == 0
    words = metrics["shape_words"]
    assert set(words) == {"circle", "square", "triangle", "star", "heart"}
    assert all(w["median_rank"] <= 5 for w in words.values())  # measured 3-4


def test_demo_query_modes(full_demo):
    """The query table (no language model) against the text encoder and the query's own words,
    text-to-image R@1 on the held-out captions; measured 69.6 / 70.6 / 64.4 (model / table /
    words) on an AVX-512 Xeon. The bounds leave the cross-processor drift above (~2.5 points)."""
    work, out = full_demo
    assert "distilled the query table: 100 steps" in out
    metrics = json.loads((work / "metrics.json").read_text())
    modes = {mode: score["t2i_r1"] for mode, score in metrics["query_modes"].items()}
    assert set(modes) == {"model", "table", "words"}
    # the same evaluation as the summary's figure
    assert modes["model"] == pytest.approx(metrics["summary"]["text_to_image_r1"])
    assert modes["table"] >= 0.93 * modes["model"]  # the target is 95%: measured 101%
    assert modes["table"] >= modes["words"] + 3  # measured +6.1
    assert modes["words"] >= 50


def test_demo_word_budgets(full_demo):
    """R@1 of model-mode queries when each image keeps only its K heaviest words (what
    ``--max-words K`` stores): without a budget it is the summary's figure."""
    work, _ = full_demo
    metrics = json.loads((work / "metrics.json").read_text())
    budgets = metrics["word_budgets"]
    assert list(budgets) == ["all", "8", "6", "4"]
    assert budgets["all"] == pytest.approx(metrics["summary"]["text_to_image_r1"])
    assert all(0 <= r1 <= 100 for r1 in budgets.values())


def test_demo_prints_examples_and_reuses_its_work(full_demo, capsys):
    work, out = full_demo
    for query in ("a red circle", "a large blue square left of a small yellow star"):
        assert f'query "{query}"' in out
    assert out.count("score ") >= 6 and "is brightest at patch row" in out
    assert "Loading weights" not in out
    # a second run reuses the checkpoint and the stored images
    assert main(["--workdir", str(work), "--quiet", "--no-serve"]) == 0
    again = capsys.readouterr().out
    assert "reusing the trained checkpoint" in again and "reusing its query table" in again
    assert "indexed 0 new images (0 skipped); the store holds 300" in again
