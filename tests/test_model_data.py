"""model.data: one reader per format, so training and the indexer see the same inputs the same way.

Each test runs one input through both jobs' readers (training's datasets and the indexer's
sources) and checks they agree: disagreements found earlier between them are regression tests here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_training_data_shards import _jpeg, _tar  # one pair of shard-writing helpers

from common.atomic import replace_directory
from indexer import cli
from indexer.job import IndexJob
from indexer.runner import run_index_job
from model.data import Skipped, iter_source, read_manifest, resolve_shards
from model.preprocessing import centre_crop, eval_transform, to_tensor
from training.data import ManifestDataset, ShardDataset


def _training_samples(spec: str | Path) -> dict[str, str]:
    dataset = ShardDataset(spec, shuffle=False)
    items = list(dataset.iter_slot(0, 1))
    return {i["key"]: i["caption"] for i in items if not isinstance(i, Skipped)}


def _indexer_samples(spec: str | Path) -> dict[str, str]:
    items = list(iter_source(str(spec)))
    assert all(it.error is None for it in items), [it.error for it in items]
    return {it.id: it.extra.get("caption") for it in items}


def test_resource_fork_members_belong_to_no_sample_in_either_job(tmp_path):
    shard = _tar(
        tmp_path / "00000.tar",
        [
            ("a.jpg", _jpeg(0)),
            ("._a.jpg", b"\x00\x05\x16\x07 macOS resource fork"),
            ("a.txt", b"a red square"),
            ("sub/.DS_Store", b"junk"),
            ("b.jpg", _jpeg(1)),
            ("b.txt", b"a blue circle"),
        ],
    )
    expected = {"a": "a red square", "b": "a blue circle"}
    assert _training_samples(shard) == expected
    assert _indexer_samples(shard) == expected


def test_several_brace_ranges_expand_the_same_in_both_jobs(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    for i in range(2):
        for j in range(3):
            key = f"s{i}{j}"
            _tar(folder / f"{i}{j}.tar", [(f"{key}.jpg", _jpeg(i * 3 + j)), (f"{key}.txt", b"t")])
    spec = str(folder / "{0..1}{0..2}.tar")
    assert len(resolve_shards(spec)) == 6
    assert len(ShardDataset(spec).shards) == 6
    assert (
        set(_training_samples(spec))
        == set(_indexer_samples(spec))
        == {f"s{i}{j}" for i in range(2) for j in range(3)}
    )


def _write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("image", "caption")):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_image_caption_csv_gives_both_jobs_the_same_images(tmp_path):
    images = tmp_path / "images"  # the Flickr8k sample's layout: captions.csv + images/
    images.mkdir()
    for name in ("p.jpg", "q.jpg"):
        (images / name).write_bytes(_jpeg(len(name)))
    rows = [["p.jpg", "one"], ["q.jpg", "two"], ["p.jpg", "three"]]
    manifest = _write_csv(tmp_path / "captions.csv", rows)
    training = ManifestDataset(manifest, group_by_image=True)
    items = list(iter_source(manifest))
    assert (
        [Path(it.path) for it in items] == training.images == [images / "p.jpg", images / "q.jpg"]
    )
    assert [it.extra.get("captions", [it.extra["caption"]]) for it in items] == training.captions_of
    assert [it.id for it in items] == ["p.jpg", "q.jpg"]


def test_flickr8k_sample_reads_the_same_in_both_jobs(flickr_sample):
    manifest = flickr_sample / "captions.csv"
    training = ManifestDataset(manifest, group_by_image=True)
    items = list(iter_source(manifest))
    assert len(items) == 300 and all(it.error is None for it in items)
    assert [Path(it.path) for it in items] == training.images
    assert all(len(it.extra["captions"]) == 5 for it in items)


def test_duplicate_ids_have_one_reason_code_in_both_jobs(tmp_path, tiny_model):
    images = tmp_path / "imgs"
    images.mkdir()
    for n in range(4):
        (images / f"{n}.jpg").write_bytes(_jpeg(n))
    rows = [["imgs/0.jpg", "a", "x"], ["imgs/1.jpg", "b", "x"], ["imgs/2.jpg", "c", "x"]]
    rows += [["imgs/3.jpg", "d", "y"], ["imgs/0.jpg", "e", "x"]]  # the last: a second caption
    manifest = _write_csv(tmp_path / "m.csv", rows, ("path", "caption", "id"))
    assert ManifestDataset(manifest).skips.as_dict() == {"duplicate_id": 2}
    job = IndexJob(source=str(manifest), store=str(tmp_path / "store"), checkpoint="unused")
    report = run_index_job(job.model_copy(update={"progress": False}), model=tiny_model)
    assert (report.indexed, report.skipped) == (2, 2)
    assert report.reasons == {"duplicate_id": 2}  # one key, however many duplicates
    parsed = read_manifest(manifest)
    assert [s.reason for _, s in parsed.skipped] == ["duplicate_id", "duplicate_id"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("bad.csv", "needs an image column"),
        ("missing-folder", "does not exist"),
        ("nothing-{0..3}.tar", "no .tar shards found"),
        ("none-*.tar", "no .tar shards found"),
    ],
)
def test_index_build_reports_bad_sources_in_one_line(tmp_path, capsys, source, expected):
    (tmp_path / "bad.csv").write_text("url,caption\nhttp://x/1.jpg,a dog\n")
    argv = ["build", "--source", str(tmp_path / source), "--store", str(tmp_path / "s"),
            "--checkpoint", str(tmp_path / "no-checkpoint"), "--no-progress"]  # fmt: skip
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and expected in err


def test_replace_directory_swaps_whole_folders_and_hides_temporaries(tmp_path):
    final = tmp_path / "ckpt"
    for content in ("old", "new"):
        tmp = tmp_path / f".ckpt.tmp-{content}"
        tmp.mkdir()
        (tmp / "weights").write_text(content)
        replace_directory(tmp, final)
        assert (final / "weights").read_text() == content and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _tar(tmp_path / "00000.tar", [("a.jpg", _jpeg(0))])
    (tmp_path / ".00001.tar").write_bytes(b"a half-written shard")
    assert [p.name for p in resolve_shards(tmp_path)] == ["00000.tar"]


def test_one_centre_crop_for_encoder_heat_maps_and_masks():
    from service.search.heatmap import model_view
    from training.data.collate import _eval_mask

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    crop = centre_crop(image, 14)
    assert crop.size == (14, 14)
    assert np.array_equal(np.asarray(model_view(image, 14)), np.asarray(crop))
    assert np.allclose(eval_transform(image, 14).numpy(), to_tensor(crop).numpy())
    labels = np.zeros((30, 50), dtype=np.uint8)
    labels[:, 25:] = 1  # right half
    mask = _eval_mask(labels, 14).numpy()
    assert mask[:, :7].max() == 0 and mask[:, 7:].min() == 1  # the crop is centred
