"""Metadata columns changed by a delta answer like columns built from the final records.

A random sequence of adds, replacements, metadata changes and deletions is applied with
:meth:`FieldColumns.changed`, each version saved and opened again as a publish and the next
write would; after every step, every answer (conditions, positions, ids, records, sort keys,
facets) equals that of :meth:`FieldColumns.build` of the live records, through segmented steps
and folds alike; a fold's arrays equal a fresh build's; a base's files are the same inodes in
consecutive versions; the registry may grow between steps.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from indexer.fields import FieldColumns, parse_where
from indexer.fields import columns as columns_module
from indexer.fields.where import check_sort
from tests.test_indexer_where import WHERES, make_records, registry

SORTS = ["album", "taken_at", "rating", "score", "path", "collection"]
FACETS = [("album", ""), ("tags", ""), ("taken_at", "year"), ("taken_at", "month"),
          ("collection", "")]  # fmt: skip
NEW_WHERES = [{"mood": "calm"}, {"mood": {"in": ["calm", "wild"]}, "rating": {"gte": 2}},
              {"likes": {"gte": 10}}, {"likes": {"lt": 5}, "album": "Trip"}]  # fmt: skip


def fresh_record(rng: np.random.Generator, grown: bool) -> dict:
    record = make_records(1, int(rng.integers(1 << 30)))[0]
    record["path"] = f"img/{int(rng.integers(10**6)):06d}.jpg"
    if grown and rng.random() < 0.7:
        record["mood"] = ["calm", "wild", "sleepy"][int(rng.integers(3))]
    if grown and rng.random() < 0.5:
        record["likes"] = int(rng.integers(0, 20))
    return record


def edited(record: dict, rng: np.random.Generator, grown: bool) -> dict:
    """A metadata change: some fields replaced, some removed."""
    new = dict(record)
    new.pop(["album", "rating", "tags", "location"][int(rng.integers(4))], None)
    new["score"] = float(np.round(rng.uniform(-1, 1), 3))
    if rng.random() < 0.5:
        new["album"] = ["Trip", "Home", "New album"][int(rng.integers(3))]
    if grown:
        new["mood"] = "wild"
    return new


def dense_ranks(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1]


def assert_same(got: FieldColumns, want: FieldColumns, ids: list[str], rng, grown: bool):
    reg = want.registry
    n = len(want)
    assert len(got) == n
    probe = [*ids, "not-there", "img-zzzzz"]
    assert got.positions(probe).tolist() == want.positions(probe).tolist()
    assert got.id_texts(np.arange(n)) == want.id_texts(np.arange(n))
    assert got.records(probe) == want.records(probe)
    keys = np.array([i.encode() for i in rng.permutation(probe)], dtype=np.bytes_)
    for spec in WHERES + (NEW_WHERES if grown else []):
        where = parse_where(spec, reg)
        assert got.mask(where).tolist() == want.mask(where).tolist(), spec
        assert got.allowed(where, keys).tolist() == want.allowed(where, keys).tolist(), spec
    rows = np.sort(rng.choice(n, size=min(n, 60), replace=False))
    for field in SORTS + (["mood", "likes"] if grown else []):
        assert check_sort(field, reg) is not None
        (k1, m1), (k2, m2) = got.sort_keys(field, rows), want.sort_keys(field, rows)
        assert m1.tolist() == m2.tolist(), field
        assert dense_ranks(k1[~m1]).tolist() == dense_ranks(k2[~m2]).tolist(), field
    for field, part in FACETS + ([("mood", "")] if grown else []):
        assert got.facet_counts(field, part, rows) == want.facet_counts(field, part, rows)
        everything = np.arange(n)
        assert got.facet_counts(field, part, everything) == want.facet_counts(
            field, part, everything
        )


def assert_same_arrays(got: FieldColumns, want: FieldColumns) -> None:
    """A folded base is the segment a build makes: same fields, same arrays."""
    assert got.base.names == want.base.names
    assert sorted(got.base.arrays) == sorted(want.base.arrays)
    assert got.base.ids.tolist() == want.base.ids.tolist()
    for stem, array in want.base.arrays.items():
        np.testing.assert_array_equal(np.asarray(got.base.arrays[stem]), array, err_msg=stem)


def inodes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (folder / "base").iterdir()}


@pytest.mark.parametrize("seed", [0, 1])
def test_changed_columns_answer_like_a_build_of_the_final_records(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(columns_module, "FOLD_MIN_ROWS", 12)  # base 120: folds past 15 rows
    rng = np.random.default_rng(seed)
    reg = registry()
    live = dict(zip([f"img-{i:05d}" for i in range(120)], make_records(120, seed), strict=True))
    columns = FieldColumns.build(list(live), list(live.values()), reg)
    grown, folds, segmented, linked = False, 0, 0, 0
    for step in range(70):
        if step == 25:  # a new field, inferred from a new record: earlier rows lack it
            reg.declare(["mood:keyword", "likes:integer"])
            grown = True
        kind = rng.choice(["add", "replace", "update", "delete"], p=[0.35, 0.2, 0.25, 0.2])
        existing = sorted(live)
        removed: list[str] = []
        added: list[str] = []
        if kind == "add":
            added = [f"new-{step:03d}-{k}" for k in range(int(rng.integers(1, 4)))]
            live.update({i: fresh_record(rng, grown) for i in added})
        elif kind == "replace":
            added = [existing[int(rng.integers(len(existing)))]]
            live[added[0]] = fresh_record(rng, grown)
        elif kind == "update":
            added = [existing[int(rng.integers(len(existing)))]]
            removed = list(added)
            live[added[0]] = edited(live[added[0]], rng, grown)
        else:
            removed = [existing[int(rng.integers(len(existing)))]]
            del live[removed[0]]
        before = columns
        columns = FieldColumns.changed(before, removed, added, [live[i] for i in added], reg)
        folder = tmp_path / f"v{step:03d}"
        columns.save(folder)
        columns = FieldColumns.open(folder)
        want = FieldColumns.build(list(live), list(live.values()), reg)
        assert_same(columns, want, sorted(live), rng, grown)
        if step and inodes(folder) == inodes(tmp_path / f"v{step - 1:03d}"):
            linked += 1  # the base's files are the previous version's, not written again
        elif step:
            folds += 1  # a new base: exactly what a build makes
            assert columns.plain
            assert_same_arrays(columns, want)
        segmented += not columns.plain
    assert folds >= 2 and segmented >= 20 and linked >= 10, (folds, segmented, linked)


def test_a_first_change_links_the_files_of_a_built_version(tmp_path):
    reg = registry()
    ids = [f"img-{i:05d}" for i in range(50)]
    records = make_records(50, 7)
    FieldColumns.build(ids, records, reg).save(tmp_path / "v1")
    first = FieldColumns.open(tmp_path / "v1")
    changed = FieldColumns.changed(first, [ids[3]], ["extra"], [{"album": "Zoo"}], reg)
    changed.save(tmp_path / "v2")
    assert inodes(tmp_path / "v2") == inodes(tmp_path / "v1")
    reopened = FieldColumns.open(tmp_path / "v2")
    live = dict(zip(ids, records, strict=True))
    del live[ids[3]]
    live["extra"] = {"album": "Zoo"}
    want = FieldColumns.build(list(live), list(live.values()), reg)
    assert_same(reopened, want, sorted(live), np.random.default_rng(0), grown=False)


def test_format_1_columns_still_open_and_change(tmp_path):
    """A version written before segments: its files beside columns.json."""
    reg = registry()
    ids = [f"img-{i:05d}" for i in range(40)]
    records = make_records(40, 9)
    built = FieldColumns.build(ids, records, reg)
    old = tmp_path / "old"
    info = built.base.save(old)
    (old / "columns.json").write_text(json.dumps({"format": 1, "registry": reg.to_json(), **info}))
    opened = FieldColumns.open(old)
    assert opened.sequence is None
    assert_same(opened, built, ids, np.random.default_rng(1), grown=False)
    changed = FieldColumns.changed(opened, [ids[0]], [], [], reg)
    changed.save(tmp_path / "new")
    assert os.stat(old / "ids.npy").st_ino == os.stat(tmp_path / "new" / "base" / "ids.npy").st_ino
    want = FieldColumns.build(ids[1:], records[1:], reg)
    assert_same(FieldColumns.open(tmp_path / "new"), want, ids[1:], np.random.default_rng(2), False)


def test_an_unknown_format_is_refused_in_one_line(tmp_path):
    FieldColumns.build(["a"], [{"album": "x"}], registry()).save(tmp_path)
    info = json.loads((tmp_path / "columns.json").read_text())
    (tmp_path / "columns.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(ValueError, match=r"format 99, this code reads 1 and 2; rebuild") as err:
        FieldColumns.open(tmp_path)
    assert "\n" not in str(err.value)


def test_the_sequence_is_kept_and_a_change_leaves_it_unknown(tmp_path):
    columns = FieldColumns.build(["a", "b"], [{"album": "x"}, {}], registry())
    columns.sequence = 41
    columns.save(tmp_path / "v1")
    opened = FieldColumns.open(tmp_path / "v1")
    assert opened.sequence == 41
    assert FieldColumns.changed(opened, ["a"], [], [], registry()).sequence is None


def test_changed_refuses_an_added_id_twice():
    columns = FieldColumns.build(["a"], [{}], registry())
    with pytest.raises(ValueError, match="distinct"):
        FieldColumns.changed(columns, [], ["b", "b"], [{}, {}], registry())
