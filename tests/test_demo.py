"""``lexvla demo --no-serve``: the main job, start to finish, judged by its evaluation's numbers.

The run is the demo's own recipe (pretraining both backbones on shapes, then LexVLA) at a
reduced budget that fits the test suite (``SMALL``); the numbers asserted are what that budget
reaches with a margin (measured: docs/lab-notes.md), below the full demo's (README).
"""

import contextlib
import io
import json

import pytest

from lexvla.demo import main

IMAGES = 120
SMALL = [
    "--steps", "200", "--images", str(IMAGES), "--quiet", "--no-serve",
    "--set", "pretrain.image.steps=500", "--set", "pretrain.text.steps=200",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--workdir", str(work), *SMALL]) == 0
    return work, out.getvalue()


def test_demo_numbers(demo_run):
    work, out = demo_run
    assert "pretrained the image backbone: 500 steps" in out
    assert "pretrained the text backbone: 200 steps" in out and "trained 200 steps" in out
    metrics = json.loads((work / "metrics.json").read_text())
    s = metrics["summary"]
    assert metrics["retrieval"]["images"] == IMAGES
    # retrieval at the paper's threshold (chance: 1/120)
    assert s["text_to_image_r1"] >= 40 and s["image_to_text_r1"] >= 35
    # words in the right place: PatchDis over shape kinds (chance 0.11) and colours (0.07)
    assert s["patchdis_kind_miou"] >= 0.4 and s["patchdis_colour_miou"] >= 0.85
    # the right words: little mass on words in no caption, few active words
    assert s["image_mass_off_captions"] <= 0.3 and s["text_mass_off_captions"] <= 0.3
    assert s["active_share_per_image"] <= 0.1
    red = metrics["red_circle"]
    assert red["red_and_circle_in_top5"] >= 4
    assert sum(set(h["top_words"]) == {"red", "circle"} for h in red["hits"]) >= 4
    assert metrics["no_star"]["hits"] == 10 and metrics["no_star"]["with_star"] <= 1
    assert set(metrics["shape_words"]) == {"circle", "square", "triangle", "star", "heart"}


def test_demo_prints_examples_and_reuses_its_work(demo_run, capsys):
    work, _ = demo_run
    # a second run reuses the checkpoint and the stored images
    assert main(["--workdir", str(work), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "reusing the trained checkpoint" in out
    assert f"indexed 0 new images (0 skipped); the store holds {IMAGES}" in out
    for query in ("a red circle", "a large blue square left of a small yellow star"):
        assert f'query "{query}"' in out
    assert out.count("score ") >= 6 and "is brightest at patch row" in out
    assert "Loading weights" not in out
