"""Group commit: concurrent adds share writes, each caller gets its own group's version or
error, an id given twice in a group keeps its last image, and groups stay under their bound."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.group_commit import GroupCommit


class RecordingWriter:
    """Stands in for LiveWriter.add: records each group, holds the first one until released so
    the others pile up behind it."""

    def __init__(self, fail_on: str | None = None):
        self.groups: list[tuple[list[str], np.ndarray]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_on = fail_on

    def add(self, prepared: list[Any], rows: sp.csr_matrix) -> str:
        self.started.set()
        self.release.wait(10)
        ids = [p.info.id for p in prepared]
        self.groups.append((ids, rows.toarray()[:, 0].copy()))
        if self.fail_on in ids:
            raise OSError(28, "No space left on device")
        return f"v{len(self.groups)}"


def upload(image_id: str) -> Any:
    return SimpleNamespace(info=SimpleNamespace(id=image_id))


def row(value: float) -> sp.csr_matrix:
    return sp.csr_matrix(np.array([[value, 0.0]], dtype=np.float32))


def run_adds(commit: GroupCommit, writer: RecordingWriter, adds: list[tuple[str, float]]):
    """The first add starts alone and blocks; the rest queue behind it, in the order given (each
    is waiting before the next is sent); then all go. Returns each add's version or error."""
    with ThreadPoolExecutor(len(adds)) as pool:
        futures = [pool.submit(commit.add, [upload(adds[0][0])], row(adds[0][1]))]
        assert writer.started.wait(10)
        for n, (image_id, value) in enumerate(adds[1:], start=1):
            futures.append(pool.submit(commit.add, [upload(image_id)], row(value)))
            while len(commit._pending) < n:
                threading.Event().wait(0.005)
        writer.release.set()
        return [f.exception() or f.result() for f in futures]


def test_adds_waiting_behind_a_write_share_the_next_version():
    writer = RecordingWriter()
    commit = GroupCommit(writer)  # type: ignore[arg-type]
    results = run_adds(commit, writer, [(f"img{n}", float(n)) for n in range(9)])
    assert [ids for ids, _ in writer.groups] == [["img0"], [f"img{n}" for n in range(1, 9)]]
    assert results == ["v1"] + ["v2"] * 8
    np.testing.assert_array_equal(writer.groups[1][1], np.arange(1, 9, dtype=np.float32))


def test_an_id_twice_in_a_group_keeps_its_last_image():
    writer = RecordingWriter()
    commit = GroupCommit(writer)  # type: ignore[arg-type]
    results = run_adds(commit, writer, [("a", 1.0), ("b", 2.0), ("b", 3.0), ("c", 4.0)])
    ids, values = writer.groups[1]
    assert sorted(zip(ids, values.tolist(), strict=True)) == [("b", 3.0), ("c", 4.0)]
    assert results == ["v1", "v2", "v2", "v2"]


def test_a_failed_group_fails_each_of_its_adds_and_no_other():
    writer = RecordingWriter(fail_on="bad")
    commit = GroupCommit(writer)  # type: ignore[arg-type]
    results = run_adds(commit, writer, [("a", 1.0), ("bad", 2.0), ("c", 3.0)])
    assert results[0] == "v1"
    assert all(isinstance(r, OSError) for r in results[1:])
    assert commit.add([upload("d")], row(5.0)) == "v3"  # the next write goes on


def test_groups_stay_under_their_image_bound():
    writer = RecordingWriter()
    commit = GroupCommit(writer, max_images=3)  # type: ignore[arg-type]
    results = run_adds(commit, writer, [(f"img{n}", float(n)) for n in range(8)])
    sizes = [len(ids) for ids, _ in writer.groups]
    assert sizes == [1, 3, 3, 1]
    assert sorted(i for ids, _ in writer.groups for i in ids) == sorted(f"img{n}" for n in range(8))
    assert sorted(results) == ["v1", "v2", "v2", "v2", "v3", "v3", "v3", "v4"]


@pytest.mark.parametrize("threads", [2, 16])
def test_every_add_is_written_exactly_once_under_contention(threads):
    writer = RecordingWriter()
    writer.release.set()
    commit = GroupCommit(writer)  # type: ignore[arg-type]
    with ThreadPoolExecutor(threads) as pool:
        versions = list(pool.map(lambda n: commit.add([upload(f"i{n}")], row(n)), range(200)))
    written = [i for ids, _ in writer.groups for i in ids]
    assert sorted(written) == sorted(f"i{n}" for n in range(200))
    assert set(versions) == {f"v{k}" for k in range(1, len(writer.groups) + 1)}


def test_a_leader_whose_add_did_not_fit_leads_again_until_it_is_written():
    """Groups take the oldest adds: a thread that leads a group without its own add (the
    bound was reached) leads or waits again, and returns its own version, never another's."""
    writer = RecordingWriter()
    commit = GroupCommit(writer, max_images=1)  # type: ignore[arg-type]
    results = run_adds(commit, writer, [(f"img{n}", float(n)) for n in range(6)])
    assert [ids for ids, _ in writer.groups] == [[f"img{n}"] for n in range(6)]
    assert results == [f"v{n + 1}" for n in range(6)]
