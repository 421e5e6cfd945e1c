"""The training data stream: full batches, exact resume positions, rank split, skipped samples."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from training.config import load_config
from training.data import ShapesDataset, build_dataset, render_sample, write_shards
from training.loop import train
from training.stream import TrainStream

SIZE = 28


def _stream(dataset, batch: int = 4, **kwargs) -> TrainStream:
    return TrainStream(dataset, batch, image_size=SIZE, seed=1, **kwargs)


def test_map_stream_resumes_exactly_and_rolls_over_epochs() -> None:
    dataset = ShapesDataset(10, image_size=SIZE)
    full = _stream(dataset)
    batches = [full.next_batch() for _ in range(5)]  # 20 samples: crosses two epoch boundaries
    assert (full.epoch, full.consumed) == (1, 10)  # the next epoch starts when it is needed
    first = _stream(dataset)
    for _ in range(2):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # JSON-safe
    assert state == {"kind": "map", "epoch": 0, "consumed": 8}
    second = _stream(dataset)
    second.load_state_dict(state)
    for expected in batches[2:]:
        got = second.next_batch()
        assert got["captions"] == expected["captions"]
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"])


def test_ranks_take_disjoint_halves_of_each_epoch() -> None:
    dataset = ShapesDataset(8, image_size=SIZE)
    seen = []
    for rank in range(2):
        stream = _stream(dataset, batch=4, rank=rank, world_size=2, augment=False)
        seen.append(stream._epoch_order())
    assert sorted(seen[0] + seen[1]) == list(range(8)) and not set(seen[0]) & set(seen[1])


def _corrupt_manifest(tmp_path: Path) -> Path:
    rows = ["image,caption"]
    for i in range(6):
        sample = render_sample(i, image_size=SIZE)
        sample["image"].save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{sample['caption']}")
    (tmp_path / "garbage.jpg").write_bytes(b"this is no image")
    good = io.BytesIO()
    render_sample(9, image_size=SIZE)["image"].save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:200])
    rows += ["garbage.jpg,a red circle", "truncated.png,a blue square", "missing.png,a star"]
    rows.append("0.png,")  # an empty caption: rejected when the manifest is read
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_corrupt_samples_are_skipped_and_batches_stay_full(tmp_path: Path) -> None:
    dataset = build_dataset(str(_corrupt_manifest(tmp_path)), "train")
    stream = _stream(dataset, batch=4)
    skipped: dict[str, int] = {}
    for _ in range(3):  # 12 usable samples: two epochs of 6 good rows and 3 bad ones
        batch = stream.next_batch()
        assert batch["pixel_values"].shape == (4, 3, SIZE, SIZE)
        for reason, n in batch["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert set(skipped) == {"not_an_image", "corrupt_image", "missing_file"}
    assert all(n >= 1 for n in skipped.values())


def test_all_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("image,caption\nmissing.png,a dog\n")
    stream = _stream(build_dataset(str(tmp_path / "bad.csv"), "train"))
    with pytest.raises(RuntimeError, match="no usable sample"):
        stream.next_batch()


def _shards_with_a_bad_record(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    samples = [render_sample(i, image_size=SIZE) for i in range(10)]
    write_shards(({"image": s["image"], "caption": s["caption"]} for s in samples), folder, 5)
    with tarfile.open(folder / "00002.tar", "w") as tar:  # one undecodable record
        for name, data in (("bad.jpg", b"\xff\xd8 broken"), ("bad.txt", b"a red circle")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder


def test_shard_stream_position_resumes_exactly(tmp_path: Path) -> None:
    full = _stream(build_dataset(str(_shards_with_a_bad_record(tmp_path)), "train", seed=1))
    batches = [full.next_batch() for _ in range(4)]
    skipped = sum(sum(b["skipped"].values()) for b in batches)
    assert skipped >= 1  # the bad record, counted once per epoch
    first = _stream(build_dataset(str(tmp_path / "shards"), "train", seed=1))
    first.next_batch()
    state = first.state_dict()
    assert state["kind"] == "shards"
    second = _stream(build_dataset(str(tmp_path / "shards"), "train", seed=1))
    second.load_state_dict(json.loads(json.dumps(state)))
    for expected in batches[1:]:
        assert second.next_batch()["captions"] == expected["captions"]


def test_skips_are_counted_in_the_metrics_log(tmp_path: Path) -> None:
    manifest = _corrupt_manifest(tmp_path)
    config = load_config(
        None,
        {
            "output_dir": str(tmp_path / "run"),
            "model.overrides.image.image_size": SIZE,
            "data.train": str(manifest),
            "data.num_workers": 0,
            "batch_size": 4,
            "steps": 3,
            "log_every": 1,
            "cpu_threads": 1,
            "progress": False,
        },
    )
    summary = train(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    assert last["skipped"]["empty_caption"] == 1  # the manifest row, counted once
    assert {"not_an_image", "corrupt_image", "missing_file"} <= set(last["skipped"])
    assert (
        last["skipped_total"] == sum(last["skipped"].values()) == sum(summary["skipped"].values())
    )
    assert [x["skipped_total"] for x in lines] == sorted(x["skipped_total"] for x in lines)
