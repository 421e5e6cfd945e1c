"""CSV/JSONL manifests: path resolution, both item views, and bad rows and images skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from model.data import SkipCounter, Skipped, read_manifest
from training.data import Collate, ManifestDataset

FLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k-sample"


def _image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_rows_resolve_relative_to_the_manifest(tmp_path: Path) -> None:
    _image(tmp_path / "pics" / "a.jpg")
    _image(tmp_path / "pics" / "b.png")
    absolute = _image(tmp_path / "elsewhere" / "c.jpg")
    manifest = _csv(
        tmp_path / "m.csv",
        ["image", "caption"],
        [
            ["pics/a.jpg", "a red box"],
            ["pics/b.png", "a  red\tpatch"],
            ["pics/a.jpg", "red"],
            [str(absolute), "third"],
        ],
    )
    dataset = ManifestDataset(manifest)
    assert len(dataset) == 4 and dataset.skips.total == 0
    first = dataset[0]
    assert isinstance(first, dict)
    assert first["image"].mode == "RGB" and first["caption"] == "a red box"
    second = dataset[1]
    assert isinstance(second, dict) and second["caption"] == "a red patch"
    assert [r.image_id for r in dataset.rows] == [0, 1, 0, 2]
    assert dataset.rows[3].image == absolute
    grouped = ManifestDataset(manifest, group_by_image=True)
    assert len(grouped) == 3
    item = grouped[0]
    assert isinstance(item, dict)
    assert item["captions"] == ["a red box", "red"] and item["image_id"] == 0


def test_jsonl_with_other_column_names_and_image_root(tmp_path: Path) -> None:
    _image(tmp_path / "root" / "x.jpg")
    lines = [{"path": "x.jpg", "text": "one"}, {"PATH": "x.jpg", "Text": "two"}]
    manifest = tmp_path / "meta" / "m.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    rows = read_manifest(manifest, image_root=tmp_path / "root").rows
    assert [r.caption for r in rows] == ["one", "two"]
    assert rows[0].image == tmp_path / "root" / "x.jpg"


def test_bad_rows_are_counted_when_read(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"image": "a.jpg", "caption": "fine"}),
                "{not json",
                json.dumps(["a list"]),
                json.dumps({"image": "a.jpg", "caption": "   "}),
                json.dumps({"caption": "no image"}),
                json.dumps({"image": "a.jpg"}),
            ]
        )
    )
    dataset = ManifestDataset(manifest)
    assert len(dataset) == 1
    assert dataset.skips.as_dict() == {"empty_caption": 2, "bad_row": 3}


def test_csv_without_the_needed_columns_is_a_clear_error(tmp_path: Path) -> None:
    manifest = _csv(tmp_path / "m.csv", ["url", "caption"], [["http://x", "y"]])
    with pytest.raises(ValueError, match="image column"):
        ManifestDataset(manifest)
    with pytest.raises(ValueError, match="manifest ends in"):
        ManifestDataset(tmp_path / "m.parquet")
    with pytest.raises(FileNotFoundError):
        ManifestDataset(tmp_path / "absent.csv")


def test_unreadable_images_are_skipped_and_counted_across_workers(tmp_path: Path) -> None:
    good = _image(tmp_path / "good.jpg")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_bytes(b"plain text, not pixels" * 4)
    rows = [["good.jpg", "ok"]] * 5 + [["cut.jpg", "t"], ["text.jpg", "n"], ["gone.jpg", "m"]]
    dataset = ManifestDataset(_csv(tmp_path / "m.csv", ["image", "caption"], rows))
    reasons = {i: item.reason for i in range(8) if isinstance(item := dataset[i], Skipped)}
    assert reasons == {5: "corrupt_image", 6: "not_an_image", 7: "missing_file"}

    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=Collate(image_size=16))
    counter, captions = SkipCounter(), []
    for batch in loader:
        counter.update(batch["skipped"])
        captions += batch["captions"]
        assert batch["pixel_values"].shape == (len(batch["captions"]), 3, 16, 16)
        assert batch["positions"] == []
    assert captions == ["ok"] * 5
    assert counter.as_dict() == {"missing_file": 1, "not_an_image": 1, "corrupt_image": 1}


@pytest.mark.skipif(not FLICKR.is_dir(), reason="shared/data/flickr8k-sample is not available")
def test_shared_flickr8k_sample_finds_its_images_folder() -> None:
    dataset = ManifestDataset(FLICKR / "captions.csv", group_by_image=True)
    assert len(dataset) == 300 and len(dataset.rows) == 1500 and dataset.skips.total == 0
    assert all(len(c) == 5 for c in dataset.captions_of)
    assert dataset.images[0].parent == FLICKR / "images"
    item = dataset[0]
    assert isinstance(item, dict) and item["image"].mode == "RGB" and len(item["captions"]) == 5
    explicit = ManifestDataset(FLICKR / "captions.csv", image_root=FLICKR / "images")
    assert explicit.rows == ManifestDataset(FLICKR / "captions.csv").rows
