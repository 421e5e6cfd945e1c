"""Live writes on an index in step with its store change only what they change; anything else
that reached the store (a crash between a commit and its publish, a batch job, a command) is
found by the write sequence and reconciled in full.

The store and its rows are made here without a model: vectors are random sparse rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.build import build_index
from indexer.decode import ImageInfo
from indexer.engines import open_index, publish
from indexer.engines.versions import current_version
from indexer.fields import parse_where
from indexer.live import LiveWriter, Prepared
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary

V = 64
WHERES = [{"album": "A"}, {"rating": {"gte": 2}}, {"tags": "x"}, {"album": {"in": ["B", "C"]}}]


def info(image_id: str, metadata: dict) -> ImageInfo:
    sha = hashlib.sha256(image_id.encode()).hexdigest()
    record = {"path": f"src/{image_id}", "collection": "default", **metadata}
    return ImageInfo(image_id, f"src/{image_id}", 100, "PNG", 8, 8, sha, {}, record)


def rows(n: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(n, V, density=0.2, random_state=rng, dtype=np.float32, format="csr")
    matrix.data += 0.1
    return matrix


def metadata(n: int) -> dict:
    return {"album": "ABC"[n % 3], "rating": n % 5, "tags": ["x", "y"][: n % 3]}


@pytest.fixture
def writer(tmp_path, monkeypatch):
    vocabulary = Vocabulary(list(range(V)), [f"w{i}" for i in range(V)])
    store = CorpusStore.create(tmp_path / "store", vocabulary, "test", 0.0)
    store.declare_fields(["rating:integer", "tags:keywords"])
    ids = [f"img/{i:03d}" for i in range(40)]
    store.append_shard(ids, rows(40, 0), [info(i, metadata(n)) for n, i in enumerate(ids)])
    build_index(store, tmp_path / "index", "compact")
    calls: list[int] = []
    full = LiveWriter.reconcile

    def counted(self, index, change):
        calls.append(1)
        return full(self, index, change)

    monkeypatch.setattr(LiveWriter, "reconcile", counted)
    live = LiveWriter(store, tmp_path / "index", max_pixels=10_000_000)
    live.full_reconciles = calls  # type: ignore[attr-defined]
    yield live
    store.close()


def add(writer: LiveWriter, image_id: str, seed: int, **fields) -> sp.csr_matrix:
    row = rows(1, seed)
    writer.add([Prepared(info(image_id, fields), None, b"thumbnail")], row)
    return row


def assert_index_is_the_store(writer: LiveWriter) -> None:
    """The current version holds the store's live images, vectors and records, and says so."""
    store = writer.store
    index = open_index(writer.index_dir)
    try:
        want, ids = store.field_columns(), store.ids()
        got = index.fields
        assert got is not None and got.sequence == store.catalog.sequence()
        assert index.count() == len(ids) == len(got) == len(want)
        assert got.id_texts(np.arange(len(got))) == want.id_texts(np.arange(len(want)))
        assert got.records(ids) == want.records(ids)
        for spec in WHERES:
            where = parse_where(spec, store.fields)
            assert got.mask(where).tolist() == want.mask(where).tolist(), spec
        vectors = store.vectors_of(ids)
        for n in range(0, len(ids), 7):
            assert index.vectors_of([ids[n]]).nnz == vectors[n].nnz
    finally:
        index.close()


def base_inodes(writer: LiveWriter) -> dict[str, int]:
    base = current_version(writer.index_dir) / "fields" / "base"
    return {p.name: p.stat().st_ino for p in base.iterdir()}


def test_writes_in_step_with_the_store_change_only_what_they_change(writer):
    row = add(writer, "new/a", 1, album="A", rating=4)  # the built version records its sequence
    before = base_inodes(writer)
    add(writer, "img/005", 2, album="Z")  # replaces an image
    assert writer.update("img/007", {"mood": "calm", "rating": None})["mood"] == "calm"
    assert writer.delete("img/009")
    assert writer.full_reconciles == []  # type: ignore[attr-defined]
    assert base_inodes(writer) == before  # the base columns were linked, never written again
    assert_index_is_the_store(writer)
    index = open_index(writer.index_dir)
    assert index.search(row, 1)[0][0] == "new/a"
    assert index.fields.records(["img/007"])["img/007"]["mood"] == "calm"
    assert "rating" not in index.fields.records(["img/007"])["img/007"]
    assert index.fields.mask(parse_where({"mood": "calm"}, writer.store.fields)).sum() == 1
    index.close()


def test_a_commit_that_was_never_published_is_reconciled_by_the_next_write(writer):
    store = writer.store
    add(writer, "first", 1)
    # what a crash between committing and publishing leaves (or a batch job writing the store)
    store.append_shard(["crash/a"], rows(1, 5), [info("crash/a", {"album": "B"})])
    store.update_metadata({"img/001": ({}, {"path": "src/img/001", "album": "Moved"})})
    store.delete(["img/002"])
    add(writer, "after", 2)
    assert len(writer.full_reconciles) == 1  # type: ignore[attr-defined]
    assert_index_is_the_store(writer)
    index = open_index(writer.index_dir)
    assert index.fields.records(["img/001"])["img/001"]["album"] == "Moved"
    assert index.search(store.vectors_of(["crash/a"]), 1)[0][0] == "crash/a"
    index.close()
    writer.delete("after")  # in step again
    assert len(writer.full_reconciles) == 1  # type: ignore[attr-defined]
    assert_index_is_the_store(writer)


def test_catch_up_publishes_a_metadata_change_it_missed(writer):
    assert writer.catch_up() is None  # the built version reflects the store
    writer.store.update_metadata({"img/003": ({}, {"path": "src/img/003", "album": "Late"})})
    assert writer.catch_up() is not None  # the same images, another record
    assert_index_is_the_store(writer)
    assert writer.catch_up() is None


def test_a_version_that_records_no_sequence_is_compared_in_full_once(writer):
    store = writer.store
    store.delete(["img/004"])  # as `lexvla index delete` does: store, then index
    index = open_index(writer.index_dir)
    index.delete(["img/004"])
    index.fields = store.field_columns()  # no sequence: it is not known what was read when
    publish(index, writer.index_dir)
    index.close()
    add(writer, "one", 1)
    add(writer, "two", 2)
    assert len(writer.full_reconciles) == 1  # type: ignore[attr-defined]
    assert_index_is_the_store(writer)


def test_the_write_sequence_steps_once_per_commit_that_changes_images(writer):
    store = writer.store
    start = store.catalog.sequence()
    assert start >= 1  # the fixture's shard
    store.append_shard(["s/1", "s/2"], rows(2, 3), [info("s/1", {}), info("s/2", {})])
    store.update_metadata({"s/1": ({}, {"album": "A"})})
    store.delete(["s/2", "s/1"])
    assert store.catalog.sequence() == start + 3
    store.record_skipped([])  # no image changed
    store.declare_fields(["other:float"])
    assert store.catalog.sequence() == start + 3
    reopened = CorpusStore.open(store.root)
    assert reopened.catalog.sequence() == start + 3
    reopened.close()


def test_a_commit_by_another_writer_during_a_write_is_reconciled(writer, monkeypatch):
    store = writer.store
    add(writer, "first", 1)
    other = CorpusStore.open(store.root)  # a batch job's process, say
    own = CorpusStore.append_shard

    def and_another(self, *args, **kwargs):
        shard = own(self, *args, **kwargs)
        other.delete(["img/010"])  # lands between this write's commit and its publish
        return shard

    monkeypatch.setattr(CorpusStore, "append_shard", and_another)
    add(writer, "second", 2)
    other.close()
    assert len(writer.full_reconciles) == 1  # type: ignore[attr-defined]
    assert "img/010" not in store.ids()
    assert_index_is_the_store(writer)


def test_the_writer_keeps_its_version_open_and_reopens_after_another_publish(writer):
    """Writes in a row reuse the index this writer published; a version published by someone
    else (a batch job) is opened before the next write, so neither side's images are lost."""
    add(writer, "new/1", 1)
    kept = writer._open
    assert kept is not None and kept[0] == current_version(writer.index_dir).name
    add(writer, "new/2", 2)
    assert writer._open is not None and writer._open[1] is kept[1]  # the same object
    rebuilt = open_index(writer.index_dir)  # another process publishes the same images
    writer.store.append_shard(["batch/1"], rows(1, 3), [info("batch/1", {})])
    rebuilt.add(["batch/1"], rows(1, 3))
    rebuilt.fields = writer.store.field_columns(writer.store.catalog.sequence())
    publish(rebuilt, writer.index_dir)
    rebuilt.close()
    add(writer, "new/3", 4)
    assert writer._open is not None and writer._open[1] is not kept[1]
    assert_index_is_the_store(writer)
    assert {"new/1", "new/2", "new/3", "batch/1"} <= set(writer.store.ids())
    writer.close()
    assert writer._open is None
