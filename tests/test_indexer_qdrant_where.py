"""Metadata conditions in the qdrant engine: Qdrant Edge and qdrant-client's local mode filter
their payloads like the brute-force reference of tests/test_indexer_where.py (the same matching
images, the same float32 top 10), with word filters ANDed, after publishing, from a corpus
store's build, and under the search layer's field order and facets."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("qdrant_edge", reason="qdrant-edge-py is not installed (the index extra)")
pytest.importorskip("qdrant_client", reason="qdrant-client is not installed (the index extra)")

from qdrant_client import QdrantClient
from test_indexer_where import (
    ALBUMS,
    TAGS,
    WHERES,
    N,
    V,
    make_records,
    make_rows,
    reference,
    registry,
    vocabulary,
)

from indexer.decode import ImageInfo
from indexer.engines import open_index, publish
from indexer.engines.memory.index import MemoryIndex
from indexer.engines.qdrant.index import QdrantIndex
from indexer.engines.qdrant.jobs import build_qdrant
from indexer.fields import FieldColumns, Where, WhereError, parse_where
from indexer.fields.where import check_facets
from indexer.filters import WordFilter, allowed_rows
from indexer.metadata import FieldRegistry
from indexer.scoring import Arrangement, search
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary

HASH = "e" * 64
ODD = "lens.model x"  # a field name Qdrant must quote in a payload path


def odd_registry() -> FieldRegistry:
    reg = registry()
    reg.declare([f"{ODD}:keyword"])
    return reg


@pytest.fixture(scope="module")
def corpus():
    ids = [f"img-{i:05d}" for i in range(N)]
    records = make_records(N, 3)
    for n, r in enumerate(records):
        if n % 4:
            r[ODD] = ["L1", "L2"][n % 2]
    return ids, records, make_rows(N, 4), make_rows(12, 5)


def build(kind: str, corpus, tmp_path) -> QdrantIndex:
    ids, records, rows, _ = corpus
    if kind == "edge":
        index = QdrantIndex.create(V, HASH, workdir=tmp_path / "work", optimize_every=400)
    else:
        index = QdrantIndex.create(V, HASH, client=QdrantClient(":memory:"), collection="w")
    index.declare_fields(odd_registry())
    index.add(ids[:500], rows[:500], records=records[:500])
    index.upsert(ids[500:], rows[500:], records=records[500:])
    index.fields = FieldColumns.build(ids, records, odd_registry())
    return index


@pytest.fixture(scope="module", params=["edge", "local"])
def built(request, corpus, tmp_path_factory):
    return build(request.param, corpus, tmp_path_factory.mktemp(request.param))


def random_wheres(records: list[dict], count: int, seed: int) -> list[dict]:
    """Conditions drawn at random: ranges around stored values (bounds hit exactly), sets of
    keywords, geo circles, and their conjunctions."""
    rng = np.random.default_rng(seed)
    stamps = sorted(r["taken_at"] for r in records if "taken_at" in r)
    scores = sorted(r["score"] for r in records if "score" in r)
    out = []
    for _ in range(count):
        a, b = sorted(rng.choice(len(stamps), 2, replace=False).tolist())
        lo, hi = sorted(rng.choice(len(scores), 2, replace=False).tolist())
        choices = [
            {"taken_at": {"gte": stamps[a], "lt": stamps[b]}},
            {"score": {"gt": scores[lo], "lte": scores[hi]}},
            {"rating": {"in": sorted(set(rng.integers(0, 6, 2).tolist()))}},
            {"album": {"in": sorted(set(rng.choice(ALBUMS, 2).tolist()))}},
            {"tags": {"in": sorted(set(rng.choice(TAGS, 2).tolist()))}},
            {ODD: "L1"},
            {
                "location": {
                    "near": {
                        "lat": float(rng.uniform(40, 50)),
                        "lon": float(rng.uniform(0, 10)),
                        "km": float(rng.uniform(50, 600)),
                    }
                }
            },
        ]
        picked = rng.choice(len(choices), int(rng.integers(1, 4)), replace=False)
        where: dict = {}
        for n in picked.tolist():
            where.update(choices[n])
        out.append(where)
    return out


def test_conditions_equal_the_reference(built, corpus):
    ids, records, rows, queries = corpus
    reg = odd_registry()
    specs: list[Any] = [*WHERES, *random_wheres(records, 25, seed=11)]
    assert built.filters_metadata
    for n, spec in enumerate(specs):
        where = parse_where(spec, reg)
        q = queries[n % queries.shape[0]]
        expected = reference(rows, records, ids, q, where)
        everything = built.search(q, N, where=where)
        assert {i for i, _ in everything} == {i for i, _ in expected}, spec
        top = built.search(q, 10, where=where)
        assert [i for i, _ in top] == [i for i, _ in expected[:10]], spec
        np.testing.assert_allclose([s for _, s in top], [s for _, s in expected[:10]], rtol=1e-5)
        assert built.search(q, 5, 5, where=where) == top[5:10]
    first = parse_where(specs[0], reg)
    batch = built.search_batch(queries[:4], 10, where=first)
    assert batch == [built.search(queries[n], 10, where=first) for n in range(4)]


def test_word_filters_and_conditions_are_anded(built, corpus):
    ids, records, rows, queries = corpus
    where = parse_where({"rating": {"gte": 2}, "album": {"in": ["Trip", "Zoo"]}}, odd_registry())
    words = np.asarray((rows > 0).sum(axis=0)).ravel()
    common = np.argsort(-words)[:6].tolist()
    for filters in (WordFilter(exclude=frozenset(common[:2])),
                    WordFilter(require=frozenset(common[2:3]), exclude=frozenset(common[3:4]))):  # fmt: skip
        allowed = allowed_rows(filters, rows)
        for n in range(0, queries.shape[0], 4):
            expected = [
                (i, s)
                for i, s in reference(rows, records, ids, queries[n], where)
                if allowed[ids.index(i)]
            ]
            found = built.search(queries[n], N, filters=filters, where=where)
            assert [i for i, _ in found] == [i for i, _ in expected]


def test_published_edge_index_filters_after_reopening(corpus, tmp_path):
    ids, records, rows, queries = corpus
    index = build("edge", corpus, tmp_path)
    publish(index, tmp_path / "ix")
    index.close()
    reopened = open_index(tmp_path / "ix")
    assert reopened.fields is not None and len(reopened.fields) == N
    where = parse_where({"taken_at": {"lte": "2020-06-30T23:00:00-05:00"}, ODD: "L2"},
                        odd_registry())  # fmt: skip
    expected = reference(rows, records, ids, queries[1], where)
    assert [i for i, _ in reopened.search(queries[1], N, where=where)] == [i for i, _ in expected]
    reopened.close()


def test_an_index_without_metadata_points_refuses_in_one_line(corpus, tmp_path):
    ids, records, rows, queries = corpus
    index = QdrantIndex.create(V, HASH, workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="declare_fields first"):
        index.add(ids[:3], rows[:3], records=records[:3])
    index.add(ids[:20], rows[:20])
    index.manifest.params.pop("metadata")  # as built before points carried their metadata
    assert index.search(queries[0], 5, where=Where()) == index.search(queries[0], 5)
    with pytest.raises(WhereError, match="without metadata in its points"):
        index.search(queries[0], 5, where=parse_where({"album": "Trip"}, registry()))
    index.close()


def test_field_order_and_facets_equal_the_memory_engine(built, corpus):
    ids, _, rows, queries = corpus
    memory = MemoryIndex.create(V)
    memory.add(ids, rows)
    memory.fields = built.fields
    reg = odd_registry()
    facets = tuple(check_facets(["album", "tags", "taken_at:year", ODD], reg))
    where = parse_where({"rating": {"gte": 1}}, reg)
    for sort in (("taken_at", True), ("album", False), ("score", False), None):
        arrange = Arrangement(where, sort, facets)
        for offset in (0, 9):
            outs = [
                search(
                    index,
                    None,
                    vocabulary(),
                    queries[3],
                    exact=True,
                    top_k=9,
                    offset=offset,
                    arrange=arrange,
                )
                for index in (memory, built)
            ]
            assert outs[0].matches and outs[1].matches == outs[0].matches
            assert outs[1].facets == outs[0].facets and outs[1].facets["album"]
            assert [h.id for h in outs[1].hits] == [h.id for h in outs[0].hits], sort


def test_a_store_build_carries_metadata_into_the_points(tmp_path):
    from test_indexer_qdrant_jobs import PIECES, zipf_rows

    vocab = Vocabulary.from_pieces(PIECES)
    store = CorpusStore.create(tmp_path / "store", vocab, "ckpt-w", threshold=0.01)
    store.declare_fields(["rating:integer"])
    n = 400
    rows = zipf_rows(n, 60, seed=2)[:, : len(vocab)].tocsr()
    ids = [f"im-{i:04d}" for i in range(n)]
    records = make_records(n, 8)
    for a in range(0, n, 150):
        infos = [
            ImageInfo(i, f"/p/{i}.jpg", 1, "JPEG", 8, 8, hashlib.sha256(i.encode()).hexdigest(),
                      metadata={k: v for k, v in records[j].items() if k in store.fields})
            for j, i in enumerate(ids[a : a + 150], start=a)
        ]  # fmt: skip
        store.append_shard(ids[a : a + 150], rows[a : a + 150], infos)
    version, index = build_qdrant(store, tmp_path / "ix")
    assert version is not None and index.fields is not None
    stored = store.metadata_records(ids)
    q = sp.csr_matrix(rows[7])
    for spec in ({"rating": {"gte": 3}}, {"taken_at": {"lt": "2020-01-01"}},
                 {"location": {"near": {"lat": 45, "lon": 5, "km": 400}}}):  # fmt: skip
        where = parse_where(spec, store.fields)
        expected = reference(rows, [stored[i] for i in ids], ids, q, where)
        assert expected
        assert [i for i, _ in index.search(q, n, where=where)] == [i for i, _ in expected]
    payload = index.backend.shard.retrieve([index_point(ids[0])], True, False)[0].payload
    assert payload["path"] == f"/p/{ids[0]}.jpg" and payload["id"] == ids[0]
    store.close()
    index.close()


def index_point(image_id: str) -> str:
    from indexer.engines.qdrant.points import point_id

    return point_id(image_id)
