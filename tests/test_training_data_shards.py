"""Webdataset shards: exact rank/worker coverage, determinism, skipping bad data, exact resume."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

import training.data.shards as shards_module
from model.data import SkipCounter, Skipped
from model.data.shards import count_samples, expand_braces, resolve_shards
from training.data import (
    Collate,
    ShapesDataset,
    ShardDataset,
    StreamIndex,
    StreamPosition,
    write_shards,
)

GOOD = 48  # samples in the good shards
PER_SHARD = 6
# The hand-made shard's broken samples and the reasons they must be counted under.
BAD_REASONS = {
    "corrupt_image": 1,
    "empty_caption": 1,
    "missing_image": 1,
    "missing_caption": 1,
    "not_an_image": 1,
    "bad_caption": 1,
}
BROKEN_SHARDS = {"unreadable_shard": 2}  # one not a tar at all, one truncated


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 good shards of shapes, one shard of bad samples, one non-tar, one truncated tar."""
    folder = tmp_path_factory.mktemp("shards")
    shapes = ShapesDataset(GOOD, seed=2, image_size=24)
    write_shards((shapes[i] for i in range(GOOD)), folder, samples_per_shard=PER_SHARD)
    jpeg = _jpeg(0)
    _tar(
        folder / "bad.tar",
        [
            ("ok1.jpg", jpeg),
            ("ok1.txt", b"a fine sample"),
            ("cut.jpg", jpeg[: len(jpeg) // 2]),
            ("cut.txt", b"truncated image"),
            ("blank.jpg", jpeg),
            ("blank.txt", b"  \n "),
            ("textonly.txt", b"no image here"),
            ("imageonly.jpg", jpeg),
            ("html.jpg", b"<html>403 forbidden</html>"),
            ("html.txt", b"not an image"),
            ("latin.png", _png()),
            ("latin.txt", b"caf\xe9"),
            ("ok2.png", _png()),
            ("ok2.txt", b"another fine sample"),
            ("ok2.json", b"{broken json"),
        ],
    )
    (folder / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    whole = _tar(folder / "cut_whole.tar", [("x.jpg", jpeg), ("x.txt", b"lost")]).read_bytes()
    (folder / "cut_whole.tar").write_bytes(whole[:700])  # inside x.jpg's data
    return folder


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 255, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _good_keys(shard_dir: Path) -> set[str]:
    return {f"{i // PER_SHARD:05d}{i % PER_SHARD:04d}" for i in range(GOOD)} | {"ok1", "ok2"}


def _drain(items: Iterable[Any]) -> tuple[list[str], Counter[str], list[StreamIndex]]:
    keys: list[str] = []
    reasons: Counter[str] = Counter()
    positions: list[StreamIndex] = []
    for item in items:
        if isinstance(item, Skipped):
            reasons[item.reason] += 1
        else:
            keys.append(item["key"])
            assert item["image"].mode == "RGB" and item["caption"]
        positions.append(_position(item))
    return keys, reasons, positions


def _position(item: dict[str, Any] | Skipped) -> StreamIndex:
    position = item.position if isinstance(item, Skipped) else item["position"]
    assert isinstance(position, StreamIndex), "every streamed item carries its position"
    return position


def test_one_epoch_reads_every_good_sample_and_counts_every_bad_one(shard_dir: Path) -> None:
    dataset = ShardDataset(shard_dir, seed=0, shuffle_buffer=7)
    assert len(dataset.shards) == 8 + 3
    keys, reasons, positions = _drain(dataset)
    assert sorted(keys) == sorted(_good_keys(shard_dir)) and len(keys) == len(set(keys))
    assert reasons == Counter({**BAD_REASONS, **BROKEN_SHARDS})
    assert [p.offset for p in positions] == list(range(len(positions)))
    assert count_samples(dataset.shards) == GOOD + 8  # records of bad.tar, whatever their state


def test_items_carry_metadata_and_captions(shard_dir: Path) -> None:
    items = [i for i in ShardDataset(shard_dir, shuffle=False) if not isinstance(i, Skipped)]
    first = items[0]
    assert first["key"] == "000000000" and first["shard"].endswith("00000.tar")
    assert first["meta"]["key"] == "000000000" and first["meta"]["caption"] == first["caption"]
    assert first["caption"] == ShapesDataset(1, seed=2, image_size=24)[0]["caption"]
    ok2 = next(i for i in items if i["key"] == "ok2")
    assert ok2["meta"] == {} and ok2["image"].mode == "RGB"  # broken json is not fatal


def test_unshuffled_order_is_sorted_shards_in_tar_order(shard_dir: Path) -> None:
    keys, _, _ = _drain(ShardDataset(shard_dir, shuffle=False))
    written = [f"{i // PER_SHARD:05d}{i % PER_SHARD:04d}" for i in range(GOOD)]
    assert keys == [*written, "ok1", "ok2"]


def test_order_depends_only_on_seed_and_epoch(shard_dir: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        dataset = ShardDataset(shard_dir, seed=seed, shuffle_buffer=10)
        dataset.set_epoch(epoch)
        return _drain(dataset)[0]

    first = order(1, 0)
    assert order(1, 0) == first
    assert order(1, 1) != first and sorted(order(1, 1)) == sorted(first)
    assert order(2, 0) != first


@pytest.mark.parametrize(("world_size", "workers"), [(2, 1), (2, 3), (3, 2)])
def test_slots_cover_every_item_exactly_once(
    shard_dir: Path, world_size: int, workers: int
) -> None:
    num_slots = world_size * workers
    all_keys: list[str] = []
    reasons: Counter[str] = Counter()
    for rank in range(world_size):
        dataset = ShardDataset(shard_dir, seed=4, rank=rank, world_size=world_size)
        dataset.set_epoch(3)
        for worker in range(workers):
            slot = rank * workers + worker
            keys, slot_reasons, positions = _drain(dataset.iter_slot(slot, num_slots))
            assert all(p == StreamIndex(3, slot, num_slots, i) for i, p in enumerate(positions))
            all_keys += keys
            reasons += slot_reasons
    assert sorted(all_keys) == sorted(_good_keys(shard_dir))
    assert len(all_keys) == len(set(all_keys))
    assert reasons == Counter({**BAD_REASONS, **BROKEN_SHARDS})


def test_dataloader_workers_and_ranks_split_by_shard(shard_dir: Path) -> None:
    seen: list[str] = []
    counter = SkipCounter()
    for rank in range(2):
        dataset = ShardDataset(shard_dir, seed=5, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=Collate(16))
        for batch in loader:
            seen += batch["keys"]
            counter.update(batch["skipped"])
            assert {p.slot // 2 for p in batch["positions"]} <= {rank}
            assert len({p.slot for p in batch["positions"]}) <= 1  # a batch is one worker's
    assert sorted(seen) == sorted(_good_keys(shard_dir)) and len(seen) == len(set(seen))
    assert counter.as_dict() == SkipCounter({**BAD_REASONS, **BROKEN_SHARDS}).as_dict()


def test_resume_continues_exactly_where_the_loop_stopped(shard_dir: Path) -> None:
    def loader(dataset: ShardDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=Collate(16))

    def run(dataset: ShardDataset, stop_after: int | None = None) -> tuple[list, StreamPosition]:
        batches, position = [], StreamPosition()
        for batch in loader(dataset):
            batches.append(batch)
            position.update(batch["positions"])
            if stop_after is not None and len(batches) == stop_after:
                break
        return batches, position

    def fresh() -> ShardDataset:
        dataset = ShardDataset(shard_dir, seed=9, shuffle_buffer=5)
        dataset.set_epoch(2)
        return dataset

    full, _ = run(fresh())
    first, position = run(fresh(), stop_after=5)
    assert position.epoch == 2 and position.num_slots == 2 and position.total == 15
    saved = json.loads(json.dumps(position.state_dict()))

    resumed = fresh()
    resumed.set_epoch(0)  # resume() must restore the epoch itself
    resumed.resume(StreamPosition.from_state_dict(saved))
    rest, _ = run(resumed)

    def keys(batches: list) -> list[str]:
        return [k for b in batches for k in b["keys"]]

    def indices(batches: list, slot: int) -> list[int]:
        return sorted(p.offset for b in batches for p in b["positions"] if p.slot == slot)

    done, left = keys(first), keys(rest)
    assert done and left
    assert sorted(done + left) == sorted(keys(full)) and not set(done) & set(left)
    for slot in (0, 1):  # each slot's items: consumed ones, then exactly the rest
        assert indices(first, slot) + indices(rest, slot) == indices(full, slot)
    skipped = SkipCounter()
    for b in first + rest:
        skipped.update(b["skipped"])
    assert skipped.as_dict() == SkipCounter({**BAD_REASONS, **BROKEN_SHARDS}).as_dict()


def test_resume_does_not_read_consumed_items_again(
    shard_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = iter(ShardDataset(shard_dir, seed=3, shuffle_buffer=4))
    consumed = [next(stream) for _ in range(20)]
    position = StreamPosition()
    position.update(_position(i) for i in consumed)
    assert position.consumed == {0: 20}

    decoded: list[str] = []
    real_decode = shards_module.decode_image

    def counting_decode(data: bytes, source: str) -> object:
        decoded.append(source)
        return real_decode(data, source)

    monkeypatch.setattr(shards_module, "decode_image", counting_decode)
    resumed = ShardDataset(shard_dir, seed=3, shuffle_buffer=4)
    resumed.resume(position)
    rest = list(resumed)
    assert [p.offset for p in _drain(rest)[2]] == list(range(20, 20 + len(rest)))
    done = {i["key"] for i in consumed if not isinstance(i, Skipped)}
    assert len(decoded) == sum(1 for i in rest if not isinstance(i, Skipped)) + sum(
        1 for i in rest if isinstance(i, Skipped) and i.reason in ("corrupt_image", "not_an_image")
    )
    assert not {s.rsplit(":", 1)[-1] for s in decoded} & done


def test_resume_with_other_slot_count_is_refused(shard_dir: Path) -> None:
    dataset = ShardDataset(shard_dir)
    dataset.resume(StreamPosition(epoch=0, num_slots=4, consumed={0: 3}))
    with pytest.raises(ValueError, match="same world size"):
        next(iter(dataset))


def test_stream_position_update_merge_and_new_epoch() -> None:
    position = StreamPosition()
    position.update([StreamIndex(0, 1, 4, 0), StreamIndex(0, 1, 4, 5), StreamIndex(0, 0, 4, 2)])
    assert position.consumed == {1: 6, 0: 3} and position.total == 9
    other = StreamPosition(0, 4, {2: 7, 0: 1})
    position.merge(other)
    assert position.consumed == {0: 3, 1: 6, 2: 7}
    with pytest.raises(ValueError):
        position.update([StreamIndex(0, 0, 2, 9)])
    position.update([(1, 3, 4, 0)])
    assert position.epoch == 1 and position.consumed == {3: 1}
    with pytest.raises(ValueError):
        position.update([StreamIndex(0, 0, 4, 0)])
    assert StreamPosition.from_state_dict(position.state_dict()) == position


def test_shard_specs(shard_dir: Path) -> None:
    assert expand_braces("d/{008..010}.tar") == ["d/008.tar", "d/009.tar", "d/010.tar"]
    assert expand_braces("{1..2}-{0..1}") == ["1-0", "1-1", "2-0", "2-1"]
    assert resolve_shards(str(shard_dir / "0000*.tar")) == resolve_shards(
        str(shard_dir / "{00000..00007}.tar")
    )
    assert len(resolve_shards(shard_dir)) == 11
    with pytest.raises(ValueError, match=r"no \.tar shards"):
        resolve_shards(str(shard_dir / "nothing-*.tar"))
    missing = ShardDataset(str(shard_dir / "{00006..00009}.tar"), shuffle=False)
    keys, reasons, _ = _drain(missing)
    assert len(keys) == 2 * PER_SHARD and reasons == Counter({"unreadable_shard": 2})


def test_written_shards_are_byte_identical(tmp_path: Path) -> None:
    shapes = ShapesDataset(5, seed=1, image_size=16)
    a = write_shards((shapes[i] for i in range(5)), tmp_path / "a", samples_per_shard=2)
    b = write_shards((shapes[i] for i in range(5)), tmp_path / "b", samples_per_shard=2)
    assert [p.name for p in a] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert not list((tmp_path / "a").glob("*.tmp"))
