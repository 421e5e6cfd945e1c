"""Building qdrant indexes from a corpus store: the CLI, a job killed during an upsert and resumed,
sharded jobs writing one collection, and deletes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_edge", reason="qdrant-edge-py is not installed (the index extra)")

from qdrant_client import QdrantClient
from test_indexer_engines import zipf_rows

from indexer.cli import main as index_main
from indexer.decode import ImageInfo
from indexer.engines import open_index
from indexer.engines.memory.index import MemoryIndex
from indexer.engines.qdrant.jobs import build_qdrant, publish_collection
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary

REPO = Path(__file__).resolve().parents[1]
PIECES = ["<unk>"] + ["▁" + "".join(p) for p in itertools.product("abcdefghij", repeat=3)]
SHARD_ROWS = 300


def make_store(path: Path, n: int, seed: int, prefix: str = "img") -> tuple[list[str], object]:
    """A store of ``n`` synthetic rows in shards of SHARD_ROWS; returns (ids, rows)."""
    vocab = Vocabulary.from_pieces(PIECES)
    store = CorpusStore.create(path, vocab, "ckpt-q", threshold=0.01)
    rows = zipf_rows(n, 80, seed)[:, : len(vocab)].tocsr()
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    for a in range(0, n, SHARD_ROWS):
        part = ids[a : a + SHARD_ROWS]
        infos = [
            ImageInfo(i, f"/img/{i}.jpg", 1, "JPEG", 64, 48, hashlib.sha256(i.encode()).hexdigest())
            for i in part
        ]
        store.append_shard(part, rows[a : a + SHARD_ROWS], infos)
    store.close()
    return ids, rows


def same_top(index, ids, rows, queries) -> None:
    exact = MemoryIndex.create(rows.shape[1])
    exact.add(ids, rows)
    for n in range(queries.shape[0]):
        assert [i for i, _ in index.search(queries[n], 10)] == [
            i for i, _ in exact.search(queries[n], 10)
        ]


@pytest.fixture(scope="module")
def queries():
    return zipf_rows(8, 40, seed=9)[:, : len(Vocabulary.from_pieces(PIECES))].tocsr()


def index_cli(command: str, tmp_path: Path, *args: str) -> int:
    """``lexvla index COMMAND --store TMP/store --index TMP/ix ARGS...``; its exit status."""
    where = ["--store", str(tmp_path / "store"), "--index", str(tmp_path / "ix")]
    return index_main([command, *where, *args])


def test_reindex_and_delete_through_the_cli(tmp_path, queries, capsys):
    ids, rows = make_store(tmp_path / "store", 700, seed=1)
    qdrant = ["--engine", "qdrant", "--qdrant-datatype"]
    assert index_cli("reindex", tmp_path, *qdrant, "float32", "--no-qdrant-on-disk") == 0
    index = open_index(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "versions" / "v0001" / "index.json").read_text())
    assert manifest["engine"] == "qdrant" and manifest["count"] == 700
    assert manifest["params"]["on_disk"] is False and manifest["checkpoint_id"] == "ckpt-q"
    same_top(index, ids, rows, queries)
    assert not list((tmp_path / "ix" / "versions").glob(".build-qdrant*"))  # work files gone
    del index
    assert index_cli("delete", tmp_path, ids[0], ids[1]) == 0
    assert "index: 2 deleted; published" in capsys.readouterr().out
    assert open_index(tmp_path / "ix").count() == 698
    assert index_cli("reindex", tmp_path, *qdrant, "int4") == 2
    assert "float32, float16, uint8" in capsys.readouterr().err


KILLER = """
import os, sys
sys.path.insert(0, {repo!r})
from indexer.engines.qdrant import backends as qdrant_backends
from indexer.build import build_index
from indexer.store import CorpusStore

calls = [0]
upsert = qdrant_backends.EdgeBackend.upsert
def dying(self, *args):
    calls[0] += 1
    if calls[0] == {die_at}:
        os._exit(9)  # killed in the middle of a store shard (2 of its batches written)
    return upsert(self, *args)
qdrant_backends.EdgeBackend.upsert = dying
with CorpusStore.open({store!r}) as store:
    build_index(store, {index!r}, "qdrant", optimize_every=200)
"""


def test_a_job_killed_during_an_upsert_resumes_with_nothing_lost_or_duplicated(tmp_path, queries):
    ids, rows = make_store(tmp_path / "store", 1500, seed=2)  # 5 store shards, 2 batches each
    script = KILLER.format(
        repo=str(REPO), die_at=6, store=str(tmp_path / "store"), index=str(tmp_path / "ix")
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, timeout=300)
    assert done.returncode == 9
    markers = list((tmp_path / "ix" / "versions").glob(".build-qdrant-*.json"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["done"] == [0, 1]
    assert not (tmp_path / "ix" / "CURRENT").exists()  # nothing published yet
    with CorpusStore.open(tmp_path / "store") as store:
        version, index = build_qdrant(store, tmp_path / "ix", optimize_every=200)
    assert version.name == "v0001" and index.count() == 1500
    reopened = open_index(tmp_path / "ix")
    assert reopened.count() == 1500
    same_top(reopened, ids, rows, queries)


def test_sharded_jobs_upsert_into_one_collection_then_publish(tmp_path, queries):
    client = QdrantClient(":memory:")
    a_ids, a_rows = make_store(tmp_path / "part-0", 400, seed=3, prefix="a")
    b_ids, b_rows = make_store(tmp_path / "part-1", 500, seed=4, prefix="b")
    for part in ("part-0", "part-1"):  # two machines, one cluster collection, no merge
        with CorpusStore.open(tmp_path / part) as store:
            version, _ = build_qdrant(
                store, tmp_path / part / "ix", False, client=client, collection="lexvla-shared"
            )
            assert version is None
    assert client.count("lexvla-shared").count == 900
    version = publish_collection(tmp_path / "ix", "lexvla-shared", client=client)
    served = open_index(tmp_path / "ix", client=client)
    assert version.name == "v0001" and served.count() == 900
    import scipy.sparse as sp

    same_top(served, a_ids + b_ids, sp.vstack([a_rows, b_rows], format="csr"), queries)
    with CorpusStore.open(tmp_path / "part-0") as store:  # a re-run changes nothing
        build_qdrant(
            store, tmp_path / "part-0" / "ix", False, client=client, collection="lexvla-shared"
        )
    assert client.count("lexvla-shared").count == 900
    assert np.isfinite(served.search(queries[0], 1)[0][1])
