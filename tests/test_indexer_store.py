"""indexer.store: round trips, deletes, skipped files, resumable-job markers, crash safety."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.decode import ImageInfo
from indexer.store import CorpusStore
from model.data import Skipped
from model.vocabulary import Vocabulary, VocabularyMismatchError

PIECES = ["<unk>", "▁dog", "▁cat", "dog", "▁red", "▁blue", "▁car", "▁tree", "▁sky", "▁sea"]


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_pieces(PIECES)


def _rows(n: int, v: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n, v)).astype(np.float32)
    dense[dense < 0.5] = 0
    return sp.csr_matrix(dense)


def _infos(ids: list[str]) -> list[ImageInfo]:
    return [
        ImageInfo(i, f"/img/{i}.jpg", 100 + n, "JPEG", 64, 48, hashlib.sha256(i.encode()).hexdigest(),
                  {"caption": f"caption {i}"})
        for n, i in enumerate(ids)
    ]  # fmt: skip


def _append(store: CorpusStore, ids: list[str], seed: int, **kwargs) -> sp.csr_matrix:
    rows = _rows(len(ids), len(store.vocabulary), seed)
    thumbs = [f"jpeg of {i}".encode() for i in ids]
    store.append_shard(ids, rows, _infos(ids), thumbs, **kwargs)
    return rows


def test_round_trip(tmp_path, vocab):
    store = CorpusStore.create(tmp_path / "s", vocab, "ckpt-1", threshold=0.1, top_k=None)
    a = _append(store, ["a", "b", "c"], 0, done_key="job/0")
    b = _append(store, ["d", "e"], 1, skipped=[Skipped("empty_file", "/img/bad", "0 bytes", "bad")])
    store.close()

    store = CorpusStore.open(tmp_path / "s", expected_vocabulary=vocab)
    ids, rows = store.vectors()
    assert ids == ["a", "b", "c", "d", "e"] and store.ids() == ids and store.count == 5
    np.testing.assert_array_equal(rows.toarray(), sp.vstack([a, b]).toarray())
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(store.vectors_of(["e", "a"]).toarray(), rows[[4, 0]].toarray())
    rec = store.metadata("d")
    assert (rec.shard, rec.row, rec.path, rec.format, rec.width, rec.height) == (
        1, 0, "/img/d.jpg", "JPEG", 64, 48)  # fmt: skip
    assert rec.extra == {"caption": "caption d"} and not rec.deleted
    assert store.thumbnail("d") == b"jpeg of d"
    assert store.has_id("a") and not store.has_id("zzz")
    assert store.has_sha256(rec.sha256)
    assert store.is_done("job/0") and store.done_keys() == {"job/0"}
    assert store.skipped() == [Skipped("empty_file", "/img/bad", "0 bytes", "bad")]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["counts"] == {"images": 5, "deleted": 0, "skipped": 1, "shards": 2, "done": 1}
    assert manifest["checkpoint_id"] == "ckpt-1" and manifest["vocabulary_hash"] == vocab.hash
    assert (tmp_path / "s" / "vectors" / "shard-00001.npz").is_file()
    assert json.loads((tmp_path / "s" / "vectors" / "shard-00001.ids.json").read_text()) == [
        "d", "e"]  # fmt: skip
    with pytest.raises(FileExistsError):
        CorpusStore.create(tmp_path / "s", vocab, "ckpt-1", threshold=0.1)


def test_delete_and_re_add(tmp_path, vocab):
    store = CorpusStore.create(tmp_path, vocab, "c", threshold=0.0)
    rows = _append(store, ["a", "b", "c"], 0)
    assert store.delete(["b", "nope"]) == 1 and store.delete(["b"]) == 0
    ids, vectors = store.vectors()
    assert ids == ["a", "c"] and store.count == 2 and not store.has_id("b")
    np.testing.assert_array_equal(vectors.toarray(), rows[[0, 2]].toarray())
    with pytest.raises(KeyError, match="'b'"):
        store.vectors_of(["a", "b"])
    with pytest.raises(KeyError):
        store.metadata("b")
    new = _append(store, ["b"], 7)  # a deleted id may come back, with its new vector
    np.testing.assert_array_equal(store.vectors_of(["b"]).toarray(), new.toarray())
    assert store.ids() == ["a", "c", "b"] and store.metadata("b").shard == 1


def test_live_duplicates_and_bad_rows_are_refused(tmp_path, vocab):
    store = CorpusStore.create(tmp_path, vocab, "c", threshold=0.0)
    _append(store, ["a", "b"], 0)
    with pytest.raises(ValueError, match="already in the corpus store"):
        _append(store, ["c", "a"], 1)
    assert not (tmp_path / "vectors" / "shard-00001.npz").exists()
    with pytest.raises(ValueError, match="shape"):
        store.append_shard(["x"], _rows(2, len(vocab), 0), _infos(["x"]))
    with pytest.raises(ValueError, match="non-negative"):
        store.append_shard(
            ["x"], sp.csr_matrix(-np.ones((1, len(vocab)), np.float32)), _infos(["x"])
        )
    assert store.count == 2


def test_vocabulary_mismatch_is_refused(tmp_path, vocab):
    CorpusStore.create(tmp_path, vocab, "c", threshold=0.0).close()
    other = Vocabulary.from_pieces([*PIECES, "▁extra"])
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"):
        CorpusStore.open(tmp_path, expected_vocabulary=other)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["vocabulary_hash"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VocabularyMismatchError, match="does not match"):
        CorpusStore.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="no corpus store"):
        CorpusStore.open(tmp_path / "missing")


def test_crash_before_commit_leaves_nothing_visible(tmp_path, vocab, monkeypatch):
    store = CorpusStore.create(tmp_path, vocab, "c", threshold=0.0)
    _append(store, ["a"], 0, done_key="chunk-0")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the shard file and the commit")

    monkeypatch.setattr(store.catalog, "commit_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        _append(store, ["b", "c"], 1, done_key="chunk-1")
    assert (tmp_path / "vectors" / "shard-00001.npz").exists()  # the orphan shard file
    store.close()

    store = CorpusStore.open(tmp_path)  # "resume": chunk-1 is not done, so it is redone
    assert store.ids() == ["a"] and not store.is_done("chunk-1")
    rows = _append(store, ["b", "c"], 2, done_key="chunk-1")
    ids, vectors = store.vectors()
    assert ids == ["a", "b", "c"]
    np.testing.assert_array_equal(vectors[1:].toarray(), rows.toarray())


def test_skipped_only_batch_marks_the_job_unit_done(tmp_path, vocab):
    store = CorpusStore.create(tmp_path, vocab, "c", threshold=0.0)
    store.record_skipped([Skipped("not_an_image", "/x", "", "x")], done_key="chunk-9")
    assert store.is_done("chunk-9") and store.count == 0 and len(store.skipped()) == 1
    assert store.vectors()[1].shape == (0, len(vocab))
