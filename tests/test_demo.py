"""``lexvla demo --no-serve`` with a small budget: the main job, start to finish."""

import re

from lexvla.demo import main


def test_demo_trains_indexes_evaluates_and_explains(tmp_path, capsys):
    work = tmp_path / "demo"
    assert (
        main(["--no-serve", "--workdir", str(work), "--steps", "30", "--images", "24", "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    assert "trained 30 steps" in out
    assert "indexed 24 new images (0 skipped); the store holds 24" in out
    assert re.search(r"threshold +text->image +\d+\.\d", out)
    assert "PatchDis (colour): mIoU" in out
    for query in ("a red circle", "a large blue square left of a small yellow star"):
        assert f'query "{query}"' in out
    assert out.count("score ") >= 6 and "is brightest at patch row" in out
    # a second run reuses the trained checkpoint and the stored images
    assert (
        main(["--no-serve", "--workdir", str(work), "--steps", "30", "--images", "24", "--quiet"])
        == 0
    )
    again = capsys.readouterr().out
    assert (
        "reusing the trained checkpoint" in again
        and "indexed 0 new images (0 skipped); the store holds 24" in again
    )
