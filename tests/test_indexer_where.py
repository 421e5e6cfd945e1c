"""Metadata conditions, field order and facets: every engine against a brute-force reference.

The reference is written out in plain Python on the records (:meth:`Where.matches`, exact float64
scores, sorted() and Counter): the memory engine must equal it exactly; the compact engine (whose
scores are quantised) must find exactly the same set of matching images, and its top k must
pass the same conditions; the search layer's field order and facets must equal the reference on
both.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from indexer.engines import open_index, publish
from indexer.engines.compact.index import CompactIndex
from indexer.engines.memory.index import MemoryIndex
from indexer.fields import FieldColumns, Where, WhereError, parse_where
from indexer.fields.where import (
    check_facets,
    check_sort,
    collection_condition,
    comparable,
    facet_value,
)
from indexer.metadata import FieldRegistry
from indexer.scoring import Arrangement, search
from model.vocabulary import Vocabulary

V = 300
N = 900
ALBUMS = ["Trip", "Home", "Zoo", "Été"]
TAGS = ["beach", "dog", "cat", "sun", "snow"]


def registry() -> FieldRegistry:
    reg = FieldRegistry()
    reg.declare(["tags:keywords", "rating:integer", "score:float"])
    return reg


def make_records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        r: dict = {"path": f"img/{i:05d}.jpg", "collection": ["a", "b", "c"][i % 3]}
        if rng.random() < 0.9:
            r["album"] = ALBUMS[int(rng.integers(len(ALBUMS)))]
        if rng.random() < 0.8:
            r["tags"] = sorted(set(rng.choice(TAGS, size=int(rng.integers(1, 4))).tolist()))
        if rng.random() < 0.85:
            day = int(rng.integers(1, 28))
            month, year = int(rng.integers(1, 13)), int(rng.integers(2018, 2023))
            offset = ["", "+02:00", "-05:00"][i % 3]
            r["taken_at"] = (
                f"{year}-{month:02d}-{day:02d}T{int(rng.integers(24)):02d}:00:00{offset}"
            )
        if rng.random() < 0.7:
            r["rating"] = int(rng.integers(0, 6))
        if rng.random() < 0.7:
            r["score"] = float(np.round(rng.uniform(-1, 1), 3))
        if rng.random() < 0.6:
            r["location"] = {"lat": float(rng.uniform(40, 50)), "lon": float(rng.uniform(0, 10))}
        records.append(r)
    return records


def make_rows(n: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = sp.random(n, V, density=0.08, random_state=rng, dtype=np.float32)
    rows.data = rng.lognormal(-2.5, 0.8, size=rows.nnz).astype(np.float32)
    return sp.csr_matrix(rows)


WHERES = [
    {"album": "Trip"},
    {"album": {"in": ["Zoo", "Été"]}},
    {"tags": "dog"},
    {"tags": {"in": ["snow", "sun"]}, "album": "Home"},
    {"taken_at": {"gte": "2020-01-01", "lt": "2021-06-01T12:00:00+02:00"}},
    {"taken_at": {"gt": "2022-03-01T00:00:00-05:00"}},
    {"rating": {"gte": 3}},
    {"rating": 5},
    {"rating": {"in": [0, 1]}, "score": {"lte": 0.25}},
    {"score": {"gt": -0.5, "lt": 0.5}},
    {"location": {"near": {"lat": 45.0, "lon": 5.0, "km": 300}}},
    {"collection": {"in": ["a", "c"]}, "taken_at": {"lte": "2021-12-31"}},
    {"album": "Nowhere"},
]


@pytest.fixture(scope="module")
def corpus():
    ids = [f"img-{i:05d}" for i in range(N)]
    records = make_records(N, 3)
    rows = make_rows(N, 4)
    queries = make_rows(12, 5)
    fields = FieldColumns.build(ids, records, registry())
    return ids, records, rows, queries, fields


def reference(rows, records, ids, q, where: Where) -> list[tuple[str, float]]:
    scores = rows.toarray().astype(np.float64) @ q.toarray().ravel().astype(np.float64)
    order = np.lexsort((np.arange(len(ids)), -scores))
    return [
        (ids[r], float(scores[r])) for r in order if scores[r] > 0 and where.matches(records[r])
    ]


def engines(corpus, tmp_path):
    ids, _, rows, _, fields = corpus
    memory = MemoryIndex.create(V)
    memory.add(ids, rows)
    memory.fields = fields
    compact = CompactIndex.create(V, pruning=None)
    compact.block_rows = 256  # four blocks
    compact.add(ids, rows)
    compact.fields = fields
    publish(compact, tmp_path / "compact")
    reopened = open_index(tmp_path / "compact")
    assert reopened.fields is not None and len(reopened.fields) == N
    return memory, compact, reopened


def test_where_conditions_mean_what_they_say_on_records():
    reg = registry()
    record = {
        "album": "Trip",
        "tags": ["dog", "sun"],
        "taken_at": "2021-06-01T10:00:00+02:00",
        "rating": 4,
        "location": {"lat": 48.8566, "lon": 2.3522},  # Paris
    }
    assert parse_where({"album": "Trip"}, reg).matches(record)
    assert not parse_where({"album": "trip"}, reg).matches(record)  # keywords are exact
    assert parse_where({"tags": "sun"}, reg).matches(record)
    assert not parse_where({"tags": {"in": ["cat", "snow"]}}, reg).matches(record)
    # 10:00+02:00 is 08:00 UTC; a value without an offset is UTC
    assert parse_where({"taken_at": {"lt": "2021-06-01T08:00:01"}}, reg).matches(record)
    assert not parse_where({"taken_at": {"lt": "2021-06-01T08:00:00"}}, reg).matches(record)
    assert parse_where({"taken_at": {"lte": "2021-06-01T08:00:00"}}, reg).matches(record)
    assert parse_where({"rating": {"gt": 3, "lte": 4}}, reg).matches(record)
    # London is 344 km from Paris
    london = {"lat": 51.5074, "lon": -0.1278}
    assert parse_where({"location": {"near": {**london, "km": 350}}}, reg).matches(record)
    assert not parse_where({"location": {"near": {**london, "km": 340}}}, reg).matches(record)
    assert not parse_where({"camera_make": "x"}, reg).matches(record)  # missing: no match
    assert facet_value("month", record["taken_at"]) == ["2021-06"]  # the date as written


@pytest.mark.parametrize(
    ("where", "field", "message"),
    [
        ({"albun": "x"}, "albun", "unknown field 'albun'"),
        ({"album": {"gte": 3}}, "album", "ranges apply to integer, float, datetime"),
        ({"rating": "high"}, "rating", "'high' is not a number"),
        ({"rating": True}, "rating", "is not a number"),
        ({"taken_at": {"gte": "last week"}}, "taken_at", "not an ISO 8601 date"),
        ({"taken_at": {"gt": "2020-01-01", "gte": "2020-01-01"}}, "taken_at", "one lower bound"),
        ({"album": {"near": {"lat": 1, "lon": 2, "km": 3}}}, "album", "'near' applies to geo"),
        ({"location": "here"}, "location", "geo point"),
        ({"location": {"near": {"lat": 100, "lon": 2, "km": 3}}}, "location", "must be"),
        ({"album": {"in": []}}, "album", "non-empty list"),
        ({"album": {"like": "T%"}}, "album", "is no condition"),
        ({"album": ["Trip"]}, "album", "is not a keyword"),
    ],
)
def test_a_wrong_condition_names_its_field(where, field, message):
    with pytest.raises(WhereError, match=message) as info:
        parse_where(where, registry())
    assert info.value.field == field


def test_sort_and_facets_are_checked():
    reg = registry()
    assert check_sort("relevance", reg) is None
    assert check_sort("-taken_at", reg) == ("taken_at", True)
    assert check_sort("album", reg) == ("album", False)
    for bad, message in [("-tags", "keywords field"), ("nope", "unknown field"),
                         ("location", "geo field")]:  # fmt: skip
        with pytest.raises(WhereError, match=message):
            check_sort(bad, reg)
    assert check_facets(["album", "taken_at:year"], reg) == [
        ("album", "album", ""), ("taken_at:year", "taken_at", "year")
    ]  # fmt: skip
    for bad in ["rating", "album:year", "taken_at:week", "nope"]:
        with pytest.raises(WhereError):
            check_facets([bad], reg)


def test_columns_masks_equal_the_reference(corpus):
    ids, records, _, _, fields = corpus
    reg = registry()
    keys = np.array([i.encode() for i in reversed(ids)], dtype=np.bytes_)
    for spec in WHERES:
        where = parse_where(spec, reg)
        expected = [where.matches(r) for r in reversed(records)]
        assert fields.allowed(where, keys).tolist() == expected, spec
    # answers are cached per condition and id array: asked again, or for another array, the same
    where = parse_where(WHERES[6], reg)
    again = fields.allowed(where, keys)
    assert again is fields.allowed(where, keys) and not again.flags.writeable
    forward = np.array([i.encode() for i in ids], dtype=np.bytes_)
    assert fields.allowed(where, forward).tolist() == again[::-1].tolist()
    unknown = np.array([b"not-there", ids[0].encode()], dtype=np.bytes_)
    assert fields.allowed(parse_where({"rating": {"gte": 0}}, reg), unknown)[0] == False  # noqa: E712
    assert fields.records([ids[7], "not-there"]) == {ids[7]: records[7]}


def test_engines_filter_like_the_reference(corpus, tmp_path):
    ids, records, rows, queries, _ = corpus
    memory, compact, reopened = engines(corpus, tmp_path)
    reg = registry()
    for spec in WHERES:
        where = parse_where(spec, reg)
        for n in range(0, queries.shape[0], 3):
            q = queries[n]
            expected = reference(rows, records, ids, q, where)
            found = memory.search(q, 10, where=where)
            assert [i for i, _ in found] == [i for i, _ in expected[:10]], spec
            np.testing.assert_allclose([s for _, s in found], [s for _, s in expected[:10]],
                                       rtol=1e-5)  # fmt: skip
            assert memory.search(q, 5, 5, where=where) == found[5:10]
            for index in (compact, reopened):
                everything = index.search(q, N, where=where)
                assert {i for i, _ in everything} == {i for i, _ in expected}, spec
                assert index.search(q, 10, where=where) == everything[:10]


def test_pruned_compact_search_keeps_to_the_conditions(corpus, tmp_path):
    from indexer.engines.compact.index import ImpactPruning

    ids, records, _, queries, _ = corpus
    _, compact, _ = engines(corpus, tmp_path)
    pruning = ImpactPruning(budget=0.05, min_postings=0, candidates=20, per_word=0)
    where = parse_where({"album": "Trip", "rating": {"gte": 2}}, registry())
    record_of = dict(zip(ids, records, strict=True))
    for n in range(queries.shape[0]):
        found = compact.search(queries[n], 10, where=where, pruning=pruning)
        assert found and all(where.matches(record_of[i]) for i, _ in found)


def test_scoped_search_adds_the_collection_condition(corpus, tmp_path):
    ids, records, _, queries, _ = corpus
    memory, compact, _ = engines(corpus, tmp_path)
    where = parse_where({"album": "Trip"}, registry()).also(collection_condition(["b"]))
    for index in (memory, compact):
        found = index.search(queries[0], N, where=where)
        assert found
        assert {records[ids.index(i)]["collection"] for i, _ in found} == {"b"}


def vocabulary() -> Vocabulary:
    return Vocabulary(list(range(V)), [f"w{i}" for i in range(V)])


@pytest.mark.parametrize("engine", ["memory", "compact"])
def test_field_order_and_facets_equal_the_reference(corpus, tmp_path, engine):
    ids, records, rows, queries, _ = corpus
    memory, compact, _ = engines(corpus, tmp_path)
    index = memory if engine == "memory" else compact
    reg = registry()
    where = parse_where({"rating": {"gte": 1}}, reg)
    facets = tuple(check_facets(["album", "tags", "taken_at:year"], reg))
    q = queries[2]
    expected = reference(rows, records, ids, q, where)
    floor = expected[len(expected) // 2][1]  # half of the matches pass
    for min_score in (0.0, floor):
        passing = [(i, s) for i, s in expected if s >= min_score]
        record_of = {i: records[ids.index(i)] for i, _ in passing}
        want_facets = {
            name: Counter(v for i, _ in passing for v in facet_value(part, record_of[i].get(f)))
            for name, f, part in facets
        }
        for sort in (("taken_at", True), ("album", False), None):
            arrange = Arrangement(where, sort, facets)
            pages = []
            for offset in (0, 7, 14):
                out = search(index, None, vocabulary(), q, exact=index.exact, top_k=7,
                             offset=offset, min_score=min_score, arrange=arrange)  # fmt: skip
                assert out.matches == len(passing)
                assert out.facets == {k: dict(v) for k, v in want_facets.items()}
                assert list(out.facets["album"].values()) == sorted(
                    out.facets["album"].values(), reverse=True
                )
                pages.extend(out.hits)
            assert all(h.score >= min_score - 1e-9 for h in pages)
            if sort is None:
                if engine == "memory":
                    assert [h.id for h in pages] == [i for i, _ in passing[:21]]
                continue
            field, descending = sort

            def key(item, field=field, descending=descending, record_of=record_of):
                value = record_of[item[0]].get(field)
                kind = reg.type_of(field)
                if value is None:
                    return (1, 0)
                v = comparable(kind, value)
                if kind == "keyword":  # by UTF-8 bytes
                    v = tuple(v.encode())
                    return (0, tuple(-b for b in v) if descending else v)
                return (0, -v if descending else v)

            keyed = [key(item) for item in passing]
            got = [key((h.id,)) for h in pages]
            assert got == sorted(keyed)[:21], (engine, sort, min_score)
            assert len({h.id for h in pages}) == len(pages)  # pages do not overlap


def test_engines_without_metadata_filtering_refuse_in_one_line(corpus):
    from indexer.engines.base import IndexManifest
    from tests.toy_engine import ToyIndex

    toy = ToyIndex.create(IndexManifest("toy", "", V))
    toy.add(corpus[0][:5], corpus[2][:5])
    with pytest.raises(WhereError, match="does not filter by metadata"):
        toy.search(corpus[3][0], 3, where=parse_where({"album": "Trip"}, registry()))
    memory = MemoryIndex.create(V)
    memory.add(corpus[0][:5], corpus[2][:5])
    with pytest.raises(WhereError, match="no metadata columns"):
        memory.search(corpus[3][0], 3, where=parse_where({"album": "Trip"}, registry()))
    with pytest.raises(WhereError, match="no metadata columns"):
        search(memory, None, vocabulary(), corpus[3][0], exact=True, top_k=3,
               arrange=Arrangement(sort=("album", False)))  # fmt: skip
