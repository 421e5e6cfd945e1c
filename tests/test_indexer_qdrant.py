"""The qdrant engine: Qdrant Edge (the real engine, in-process) and qdrant-client's local mode
(the server code path) against the exact memory engine, filters against brute force, writes,
versions and aliases, and a server that is down, slow or refuses the key."""

from __future__ import annotations

import gc
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("qdrant_edge", reason="qdrant-edge-py is not installed (the index extra)")
pytest.importorskip("qdrant_client", reason="qdrant-client is not installed (the index extra)")

from qdrant_client import QdrantClient
from test_indexer_engines import V, zipf_rows
from test_indexer_filters import oracle_search

from indexer.engines import EngineOptionError, open_index, publish
from indexer.engines.base import IndexUnavailable
from indexer.engines.memory.index import MemoryIndex
from indexer.engines.qdrant.index import QdrantIndex
from indexer.engines.qdrant.points import point_id
from indexer.filters import WordFilter, has_matrix
from model.vocabulary import VocabularyMismatchError

HASH = "d" * 64


@pytest.fixture(scope="module")
def data():
    rows = zipf_rows(1200, 100, seed=3)
    queries = sp.vstack([zipf_rows(15, 30, seed=4), zipf_rows(15, 90, seed=5)], format="csr")
    return [f"img-{i:05d}" for i in range(rows.shape[0])], rows, queries


@pytest.fixture(scope="module")
def exact(data):
    ids, rows, _ = data
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    return index


def make(kind: str, tmp_path, **options) -> QdrantIndex:
    if kind == "edge":
        return QdrantIndex.create(V, HASH, workdir=tmp_path / "work", **options)
    return QdrantIndex.create(V, HASH, client=QdrantClient(":memory:"), collection="c1", **options)


@pytest.fixture(scope="module", params=["edge", "local"])
def built(request, data, tmp_path_factory):
    ids, rows, _ = data
    index = make(request.param, tmp_path_factory.mktemp(request.param), optimize_every=500)
    index.add(ids[:700], rows[:700])
    index.upsert(ids[700:], rows[700:])
    return index


def test_float32_equals_the_exact_memory_engine(built, data, exact):
    ids, rows, queries = data
    assert built.exact and built.exact_rows and built.count() == len(ids)
    batch = built.search_batch(queries, 10)
    for n in range(queries.shape[0]):
        expected = exact.search(queries[n], 10)
        assert [i for i, _ in batch[n]] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in batch[n]], [s for _, s in expected], rtol=1e-5)
    q = queries[4]
    assert [i for i, _ in built.search(q, 5, offset=5)] == [i for i, _ in exact.search(q, 10)[5:]]
    np.testing.assert_array_equal(
        built.vectors_of([ids[9], ids[3]]).toarray(), rows[[9, 3]].toarray()
    )
    with pytest.raises(KeyError, match="nope"):
        built.vectors_of(["nope"])
    assert built.search(sp.csr_matrix((1, V), dtype=np.float32), 10) == []


def test_filters_equal_brute_force(built, data):
    ids, rows, queries = data
    counts = np.bincount(has_matrix(rows).indices, minlength=V)
    common = [int(w) for w in np.argsort(-counts)[:3]]
    for f in (
        WordFilter(exclude=frozenset(common[:2])),
        WordFilter(require=frozenset(common[:1])),
        WordFilter(require=frozenset(common[1:3]), exclude=frozenset(common[:1])),
    ):
        found = built.search_batch(queries[:6], 10, 0, f)
        for n in range(6):
            expected = oracle_search(rows, ids, queries[n], 10, 0, f)
            assert [i for i, _ in found[n]] == [i for i, _ in expected]


@pytest.mark.parametrize("datatype", ["float16", "uint8"])
def test_quantised_value_types_keep_recall(datatype, data, exact, tmp_path):
    ids, rows, queries = data
    # a low indexing threshold so the quantised sparse index (not a plain scan) answers
    index = make("edge", tmp_path, datatype=datatype, indexing_threshold_kb=50, optimize_every=400)
    index.add(ids, rows)
    index.optimize()
    assert index.optimize() is False  # nothing written since: nothing for a writer to publish
    assert not index.exact and index.exact_rows
    recalls = []
    for n in range(queries.shape[0]):
        truth = {i for i, _ in exact.search(queries[n], 10)}
        recalls.append(len(truth & {i for i, _ in index.search(queries[n], 10)}) / 10)
    assert np.mean(recalls) >= 0.99
    np.testing.assert_array_equal(index.vectors_of([ids[5]]).toarray(), rows[5].toarray())
    index.add(["one-more"], rows[:1])
    assert index.optimize() is True


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_add_upsert_again_delete(kind, data, tmp_path):
    ids, rows, queries = data
    index = make(kind, tmp_path)
    index.add(ids[:300], rows[:300])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ids[299:301], rows[299:301])
    before = index.search(queries[0], 10)
    index.upsert(ids[:300], rows[:300], metadata=[{"path": f"/p/{i}"} for i in ids[:300]])
    assert index.count() == 300 and index.search(queries[0], 10) == before  # idempotent
    top = before[0][0]
    assert index.delete([top, top, "unknown"]) == 1 and index.count() == 299
    assert top not in {i for i, _ in index.search(queries[0], 10)}
    with pytest.raises(KeyError):
        index.vectors_of([top])
    index.add([top], rows[ids.index(top)])  # a deleted id can come back
    assert index.search(queries[0], 1)[0][0] == top
    assert point_id(top) == point_id(top) != point_id(ids[1])  # stable, distinct


def test_embedded_versions_copy_on_write_and_vocabulary(data, tmp_path):
    ids, rows, queries = data
    index = make("edge", tmp_path)
    index.add(ids[:400], rows[:400])
    root = tmp_path / "index"
    first = publish(index, root)
    assert (first / "shard").is_dir() and not (tmp_path / "work" / "shard").exists()
    index.delete([ids[0]])  # the published version is never written
    publish(index, root)
    old = QdrantIndex.open(first)
    assert old.count() == 400
    with pytest.raises(EngineOptionError, match="unknown open option 'mmap' for the qdrant engine"):
        open_index(root, vocabulary_hash=HASH, mmap=True)  # another engine's option: refused
    current = open_index(root, vocabulary_hash=HASH, per_engine={"compact": {"mmap": True}})
    assert current.count() == 399
    current.add(ids[400:410], rows[400:410])  # copy-on-write again
    assert open_index(root).count() == 399
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"):
        open_index(root, vocabulary_hash="e" * 64)
    q = queries[3]
    assert [i for i, _ in old.search(q, 5)] == [
        i for i, _ in MemoryIndex_of(ids[:400], rows[:400]).search(q, 5)
    ]


def test_temporary_shard_copies_are_removed_and_saved_ones_kept(data, tmp_path, monkeypatch):
    ids, rows, _ = data
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def scratch() -> list[str]:
        return sorted(p.name for p in (tmp_path / "tmp").iterdir())

    built = QdrantIndex.create(V, HASH)  # no workdir: a temporary shard
    built.add(ids[:50], rows[:50])
    assert len(scratch()) == 1
    built.close()
    assert scratch() == []
    published = publish(QdrantIndex.create(V, HASH), tmp_path / "index")
    assert scratch() == []  # the shard moved into the version directory
    current = QdrantIndex.open(published)
    current.add(ids[50:60], rows[50:60])  # copy-on-write: a temporary copy
    assert len(scratch()) == 1
    del current  # collected unclosed: the copy goes too
    gc.collect()
    assert scratch() == [] and QdrantIndex.open(published).count() == 0


def MemoryIndex_of(ids, rows):
    index = MemoryIndex.create(V)
    index.add(ids, rows)
    return index


def test_server_alias_swap_under_concurrent_queries(data, tmp_path):
    ids, rows, queries = data
    client = QdrantClient(":memory:")
    a = QdrantIndex.create(V, HASH, client=client, collection="lexvla-a", alias="lexvla")
    a.add(ids[:600], rows[:600])
    b = QdrantIndex.create(V, HASH, client=client, collection="lexvla-b", alias="lexvla")
    b.add(ids[600:], rows[600:])
    publish(a, tmp_path / "ix")
    assert a.activate() is None
    served = QdrantIndex.open(tmp_path / "ix" / "versions" / "v0001", client=client)
    q = queries[1]
    answers = {tuple(i for i, _ in x.search(q, 5)) for x in (a, b)}
    errors: list[BaseException] = []
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            try:
                seen.add(tuple(i for i, _ in served.search(q, 5)))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(20):
        (b if n % 2 == 0 else a).activate()
    stop.set()
    for t in threads:
        t.join()
    assert not errors and seen <= answers and seen
    b.activate()
    assert served.count() == len(ids) - 600  # the alias, not the collection it was opened with


def test_server_collection_of_another_vocabulary_is_refused(tmp_path):
    client = QdrantClient(":memory:")
    QdrantIndex.create(V, HASH, client=client, collection="shared")
    QdrantIndex.create(V, HASH, client=client, collection="shared")  # same vocabulary: resumed
    with pytest.raises(VocabularyMismatchError, match="another collection name"):
        QdrantIndex.create(V, "f" * 64, client=client, collection="shared")


# --- a server that is down, slow, or refuses the key --------------------------------------------
@contextmanager
def refusing_server(status: int):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": {"error": "Invalid api-key"}}')

        do_POST = do_PUT = do_GET

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server():
    """Accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def published_server_index(tmp_path):
    client = QdrantClient(":memory:")
    index = QdrantIndex.create(V, HASH, client=client, collection="c", url="http://qdrant:6333")
    version = publish(index, tmp_path / "ix")
    index.activate()
    return version


def test_unreachable_slow_and_refusing_servers_are_clear_errors(tmp_path):
    version = published_server_index(tmp_path)
    with pytest.raises(IndexUnavailable, match=r"unreachable.*LEXVLA_QDRANT_URL"):
        QdrantIndex.open(version, url=closed_port_url(), timeout_s=1)
    with refusing_server(403) as url, pytest.raises(IndexUnavailable, match="refused the API key"):
        QdrantIndex.open(version, url=url, api_key="wrong", timeout_s=1)
    with silent_server() as url, pytest.raises(IndexUnavailable, match="timed out"):
        QdrantIndex.open(version, url=url, timeout_s=1)
