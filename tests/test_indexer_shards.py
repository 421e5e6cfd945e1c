"""Sharded builds merged into one store equal one build; merge refuses mismatches; index add."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from indexer import cli
from indexer.engines import open_index
from indexer.job import IndexJob
from indexer.merge import MergeError, merge_stores
from indexer.runner import run_index_job, shard_of
from indexer.store import CorpusStore


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from model import LexVLA

    return LexVLA.from_pretrained(tiny_checkpoint, device="cpu")


def _photos(root, n: int, start: int = 0):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG")
        (root / f"img{i:03d}.jpg").write_bytes(out.getvalue())
    return root


def _job(source, store, **kwargs) -> IndexJob:
    settings = {"source": str(source), "store": str(store), "checkpoint": "unused",
                "chunk_size": 3, "batch_size": 4, "progress": False}  # fmt: skip
    return IndexJob(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """12 photos + one broken file: one full build, and 3 shards merged (with an index)."""
    root = tmp_path_factory.mktemp("shards")
    photos = _photos(root / "photos", 12)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    run_index_job(_job(photos, root / "full"), model)
    for i in range(3):
        report = run_index_job(_job(photos, root / f"part{i}", shard_id=i, num_shards=3), model)
        assert report.indexed + report.skipped == sum(
            shard_of(p.name, 3) == i for p in photos.iterdir()
        )
    parts = [str(root / f"part{i}") for i in range(3)]
    argv = ["merge", "--out", str(root / "merged"), *parts, "--index", str(root / "index")]
    assert cli.main(argv) == 0
    return root


def test_shards_cover_the_source_disjointly():
    ids = [f"img{i:03d}.jpg" for i in range(300)]
    counts = np.bincount([shard_of(i, 3) for i in ids], minlength=3)
    assert counts.sum() == 300 and counts.min() > 60  # roughly balanced
    assert shard_of("a/b.jpg", 7) == shard_of("a/b.jpg", 7)
    with pytest.raises(ValueError, match="shard_id"):
        IndexJob(source="x", store="y", checkpoint="z", shard_id=3, num_shards=3)


def test_merged_shards_equal_one_build(built, model):
    with (
        CorpusStore.open(built / "full") as full,
        CorpusStore.open(built / "merged", expected_vocabulary=model.vocabulary) as merged,
    ):
        ids = sorted(full.ids())
        assert len(ids) == 12 and sorted(merged.ids()) == ids
        np.testing.assert_allclose(
            merged.vectors_of(ids).toarray(), full.vectors_of(ids).toarray(), rtol=1e-4, atol=1e-6
        )
        assert [s.id for s in merged.skipped()] == ["broken.jpg"]
        assert merged.metadata("img005.jpg").sha256 == full.metadata("img005.jpg").sha256
        assert merged.thumbnail("img005.jpg") == full.thumbnail("img005.jpg")
        assert merged.metadata_records(ids) == full.metadata_records(ids)
        assert merged.manifest["fields"] == full.manifest["fields"]
        assert merged.manifest["checkpoint_id"] == full.manifest["checkpoint_id"]
        queries = full.vectors_of(ids[:4])
    index = open_index(built / "index", vocabulary_hash=model.vocabulary.hash)
    assert index.count() == 12
    from indexer.engines import engine
    from indexer.engines.engine import BuildHints

    # the same engine (the default) built from the unsharded store: the same hits and scores
    same = engine(index.manifest.engine)
    reference = same.create(
        len(model.vocabulary), model.vocabulary.hash, model.checkpoint_id, 0.0,
        same.options("build", {}), BuildHints(),
    )  # fmt: skip
    with CorpusStore.open(built / "full") as full:
        for shard_ids, rows in full.iter_shards():
            reference.add(shard_ids, rows)
    for q in range(queries.shape[0]):
        got, want = index.search(queries[q], 5), reference.search(queries[q], 5)
        assert [h[0] for h in got] == [h[0] for h in want]
        np.testing.assert_allclose([h[1] for h in got], [h[1] for h in want], rtol=1e-4)


def test_merge_rerun_is_idempotent(built):
    parts = [built / f"part{i}" for i in range(3)]
    report = merge_stores(built / "merged", parts)
    assert (report.images, report.shards_written, report.skipped) == (0, 0, 0)
    assert report.shards_done_before > 0
    with CorpusStore.open(built / "merged") as merged:
        assert merged.count == 12 and len(merged.skipped()) == 1


def test_merge_refuses_mismatch_and_collisions(built, tmp_path, capsys):
    other = tmp_path / "other"
    with CorpusStore.open(built / "part0") as part:
        m = part.manifest
        CorpusStore.create(other / "threshold", part.vocabulary, m["checkpoint_id"], 0.5).close()
        budget = CorpusStore.create(
            other / "budget", part.vocabulary, m["checkpoint_id"], m["threshold"], m["top_k"], 4
        )
        budget.close()
    # another vocabulary (one word fewer), same checkpoint id and threshold
    from model.vocabulary import Vocabulary

    with CorpusStore.open(built / "part1") as part:
        v, m = part.vocabulary, part.manifest
        smaller = Vocabulary(v.token_ids.tolist()[:-1], v.pieces[:-1], v.rule)
        CorpusStore.create(other / "vocab", smaller, m["checkpoint_id"], m["threshold"]).close()
    with pytest.raises(MergeError, match="vocabulary differs"):
        merge_stores(tmp_path / "out", [built / "part0", other / "vocab"])
    with pytest.raises(MergeError, match="threshold"):
        merge_stores(tmp_path / "out", [built / "part0", other / "threshold"])
    with pytest.raises(MergeError, match="max words differs"):
        merge_stores(tmp_path / "out", [built / "part0", other / "budget"])
    shutil.copytree(built / "part0", other / "copy")
    with pytest.raises(MergeError, match="two part stores"):
        merge_stores(tmp_path / "out2", [built / "part0", other / "copy"])
    assert not (tmp_path / "out2" / "vectors").exists() or not any(
        (tmp_path / "out2" / "vectors").iterdir()
    )
    assert cli.main(["merge", "--out", str(tmp_path / "o3"), str(other / "threshold"),
                     str(built / "part0")]) == 2  # fmt: skip
    assert "threshold" in capsys.readouterr().err


def test_merge_refuses_parts_whose_field_types_differ(built, tmp_path):
    with CorpusStore.open(built / "part0") as part:
        m, vocabulary = part.manifest, part.vocabulary
    for name, kind in (("a", "integer"), ("b", "keyword")):
        with CorpusStore.create(
            tmp_path / name, vocabulary, m["checkpoint_id"], m["threshold"]
        ) as s:
            s.declare_fields([f"year:{kind}"])
    with pytest.raises(MergeError, match="field 'year' is of type keyword there but integer here"):
        merge_stores(tmp_path / "out", [tmp_path / "a", tmp_path / "b"])


def test_merge_refuses_another_vocabulary(built, tmp_path, tiny_lora_checkpoint):
    """A store really built by another checkpoint with another vocabulary (if it differs)."""
    from model import LexVLA

    other_model = LexVLA.from_pretrained(tiny_lora_checkpoint, device="cpu")
    photos = _photos(tmp_path / "photos", 2, start=100)
    run_index_job(_job(photos, tmp_path / "other"), other_model)
    with pytest.raises(MergeError, match=r"vocabulary|checkpoint"):
        merge_stores(tmp_path / "out", [built / "part0", tmp_path / "other"])


def test_add_indexes_only_new_images(tmp_path, model):
    photos = _photos(tmp_path / "photos", 4)
    store = tmp_path / "store"
    argv = ["--images", str(photos), "--store", str(store), "--checkpoint", "x", "--no-progress"]
    with pytest.raises(FileNotFoundError, match="index build"):
        run_index_job(_job(photos, store, require_store=True), model)
    run_index_job(_job(photos, store), model)
    _photos(photos, 3, start=50)
    report = run_index_job(_job(photos, store, require_store=True, chunk_size=5), model)
    assert (report.indexed, report.already_stored) == (3, 4)
    with CorpusStore.open(store) as s:
        assert s.count == 7 and s.has_id("img050.jpg")
    args = cli._parser().parse_args(["add", *argv])
    assert args.source == str(photos) and args.command == "add"


def test_killed_merge_reruns_to_the_same_store(built, tmp_path, monkeypatch):
    parts = [built / f"part{i}" for i in range(3)]
    calls = {"n": 0}
    append = CorpusStore.append_shard

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return append(self, *args, **kwargs)

    monkeypatch.setattr(CorpusStore, "append_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        merge_stores(tmp_path / "out", parts)
    monkeypatch.setattr(CorpusStore, "append_shard", append)
    report = merge_stores(tmp_path / "out", parts)
    assert report.shards_done_before >= 1 and report.images < 12  # resumed, not redone
    with (
        CorpusStore.open(tmp_path / "out") as out,
        CorpusStore.open(built / "merged") as merged,
    ):
        assert out.ids() == merged.ids()
        assert (out.vectors()[1] != merged.vectors()[1]).nnz == 0
        assert [s.id for s in out.skipped()] == [s.id for s in merged.skipped()]
