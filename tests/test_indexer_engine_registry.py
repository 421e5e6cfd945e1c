"""indexer.engines.registry: an engine added by one registration line is built, published, opened
and searched through the job, the runner, ``lexvla index`` and the service's open path; unknown
or misspelt options are refused in one line, at build and at open."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image
from pydantic import ValidationError
from toy_engine import ToyEngine, ToyIndex

from indexer import cli
from indexer.build import build_index
from indexer.decode import ImageInfo
from indexer.engines import EngineOptionError, engine, open_index, register, unregister
from indexer.engines.memory.index import MemoryIndex
from indexer.job import IndexJob
from indexer.runner import run_index_job
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary
from service.search.indexes import index_options, open_handle


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model.tiny import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture
def toy():
    register(ToyEngine())  # the one line that makes the engine known everywhere
    yield
    unregister("toy")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(7):
        out = io.BytesIO()
        Image.new("RGB", (64, 48), tuple(int(c) for c in rng.integers(0, 255, 3))).save(out, "JPEG")
        (root / f"img{i}.jpg").write_bytes(out.getvalue())
    return root


def _store(path: Path, n: int = 20) -> None:
    """A corpus store of ``n`` random rows (no images)."""
    pieces = ["<unk>"] + ["▁" + a + b for a in "abcdefgh" for b in "abcdefgh"]
    vocabulary = Vocabulary.from_pieces(pieces)
    rows = sp.random(
        n, len(vocabulary), density=0.2, format="csr", dtype=np.float32, random_state=1
    )
    ids = [f"img{i}" for i in range(n)]
    infos = [ImageInfo(i, f"/{i}.jpg", 1, "JPEG", 8, 8, hashlib.sha256(i.encode()).hexdigest())
             for i in ids]  # fmt: skip
    with CorpusStore.create(path, vocabulary, "ckpt", threshold=0.01) as store:
        store.append_shard(ids, rows, infos)


def _oracle(store: CorpusStore) -> MemoryIndex:
    oracle = MemoryIndex.create(len(store.vocabulary))
    for ids, rows in store.iter_shards():
        oracle.add(ids, rows)
    return oracle


def test_a_registered_engine_is_built_published_opened_and_searched(
    toy, tmp_path, checkpoint, photos, capsys
):
    store, index = str(tmp_path / "store"), str(tmp_path / "index")
    argv = ["build", "--source", str(photos), "--store", store, "--checkpoint", str(checkpoint),
            "--index", index, "--engine", "toy", "--toy-decimals", "2", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["index_version"] == "v0001"
    version = json.loads((Path(index) / "versions" / "v0001" / "index.json").read_text())
    assert version["engine"] == "toy" and version["count"] == 7
    assert version["params"] == {"decimals": 2, "expected_rows": 7}  # option and hint arrived

    # reindex without the option: exact rows, a second version; the service's open path
    assert cli.main(["reindex", "--store", store, "--index", index, "--engine", "toy"]) == 0
    settings = SimpleNamespace(toy_mmap=True, mmap=False)  # LEXVLA_TOY_MMAP, LEXVLA_MMAP
    assert index_options(settings) == {"toy": {"mmap": True}, "memory": {"mmap": False}}
    with CorpusStore.open(store) as corpus:
        handle = open_handle(index, corpus.vocabulary.hash, index_options(settings))
        assert handle.version == "v0002" and handle.engine == "toy" and handle.exact
        assert isinstance(handle.index, ToyIndex) and handle.count() == 7
        assert handle.index.mapped  # the open option arrived
        oracle, queries = _oracle(corpus), corpus.vectors_of(["img1.jpg", "img5.jpg"])
    for q in range(queries.shape[0]):
        got, want = handle.index.search(queries[q], 4), oracle.search(queries[q], 4)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)


def test_a_job_runs_a_registered_engine_with_its_options(toy, tmp_path, checkpoint, photos):
    from model import LexVLA

    job = IndexJob(source=str(photos), store=str(tmp_path / "store"), checkpoint="unused",
                   index=str(tmp_path / "index"), engine="toy", toy_decimals=1, progress=False)  # fmt: skip
    assert job.engine_options == {"decimals": 1}
    report = run_index_job(job, LexVLA.from_pretrained(checkpoint, device="cpu"))
    assert report.index_version == "v0001" and report.indexed == 7
    opened = open_index(tmp_path / "index")
    assert isinstance(opened, ToyIndex) and not opened.exact
    np.testing.assert_allclose(opened.rows.data, np.round(opened.rows.data, 1))


def test_misspelt_or_foreign_options_are_refused_at_build(toy, tmp_path, checkpoint, capsys):
    base = {"source": "s", "store": "t", "checkpoint": "c"}
    with pytest.raises(ValidationError, match="unknown build option 'toy_decimal' for the toy "
                       "engine; known: toy_decimals"):  # fmt: skip
        IndexJob(**base, engine="toy", toy_decimal=2)
    with pytest.raises(ValidationError, match="qdrant_url is an option of the qdrant engine, not "
                       "of compact"):  # fmt: skip
        IndexJob(**base, qdrant_url="http://q:6333")  # the default engine is compact
    with pytest.raises(ValidationError, match="unknown build option 'decimal' for the toy engine"):
        IndexJob(**base, engine="toy", engine_options={"decimal": 2})
    with pytest.raises(ValidationError, match="toy build option decimals: Input should be greater"):
        IndexJob(**base, engine="toy", toy_decimals=-1)

    _store(tmp_path / "store")
    with CorpusStore.open(tmp_path / "store") as store:
        with pytest.raises(EngineOptionError, match=r"unknown build option 'prunning' for the "
                           r"compact engine; known: pruning, threads"):  # fmt: skip
            build_index(store, tmp_path / "ix", "compact", prunning=None)
        build_index(store, tmp_path / "ix", "compact", pruning=None)  # exact search, saved
    assert open_index(tmp_path / "ix").manifest.params["pruning"] is None
    reindex = ["reindex", "--store", str(tmp_path / "store"), "--index", str(tmp_path / "ix")]
    assert cli.main([*reindex, "--engine", "toy", "--qdrant-datatype", "float16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lexvla index reindex: qdrant_datatype is an option of the qdrant engine, not of toy "
        "(the engine this index uses)"
    )


def test_misspelt_open_options_are_refused(toy, tmp_path):
    _store(tmp_path / "store")
    with CorpusStore.open(tmp_path / "store") as store:
        build_index(store, tmp_path / "ix", "toy")
        vocabulary_hash = store.vocabulary.hash
    with pytest.raises(EngineOptionError, match="unknown open option 'mmapp' for the toy engine; "
                       "known: mmap"):  # fmt: skip
        open_index(tmp_path / "ix", mmapp=True)
    with pytest.raises(EngineOptionError, match="unknown open option 'mmapp' for the toy engine"):
        open_handle(tmp_path / "ix", vocabulary_hash, {"toy": {"mmapp": True}})
    with pytest.raises(EngineOptionError, match="unknown open option 'url' for the compact"):
        open_handle(tmp_path / "ix", vocabulary_hash, {"compact": {"url": "http://q"}})
    with pytest.raises(ValueError, match="unknown index engine 'tyo'; known: memory, compact"):
        open_handle(tmp_path / "ix", vocabulary_hash, {"tyo": {}})
    assert open_index(tmp_path / "ix").count() == 20  # no options: the engine's defaults


def test_sharded_jobs_writing_one_shared_target_report_it_then_publish(
    tmp_path, checkpoint, photos
):
    """The qdrant engine's sharded jobs upsert into one collection (the engine's build hook),
    the runner reports what the engine wrote, and the engine's publish hook publishes it."""
    pytest.importorskip("qdrant_edge", reason="qdrant-edge-py is not installed (the index extra)")
    from qdrant_client import QdrantClient

    from model import LexVLA

    client, model = QdrantClient(":memory:"), LexVLA.from_pretrained(checkpoint, device="cpu")
    common = {"source": str(photos), "checkpoint": "unused", "index": str(tmp_path / "ix"),
              "engine": "qdrant", "num_shards": 2, "progress": False}  # fmt: skip
    with pytest.raises(ValidationError, match="give every shard the same collection"):
        IndexJob(**common, store="s", engine_options={"client": client})
    options = {"client": client, "collection": "shared"}
    for shard in (0, 1):
        store = str(tmp_path / f"part-{shard}")
        job = IndexJob(**common, store=store, shard_id=shard, engine_options=options)
        report = run_index_job(job, model)
        assert report.index_version is None  # nothing published by a shard
        assert (
            report.as_dict()["qdrant_collection"] == "shared" and "written" not in report.as_dict()
        )
    assert client.count("shared").count == 7
    qdrant = engine("qdrant")
    version = qdrant.publish_shared(tmp_path / "ix", qdrant.options("build", options))
    assert version.name == "v0001"
    assert open_index(tmp_path / "ix", client=client).count() == 7


def test_the_service_settings_reach_each_engine_under_their_names(monkeypatch):
    """LEXVLA_QDRANT_* are the qdrant engine's open options, LEXVLA_MMAP the memory engine's,
    LEXVLA_COMPACT_THREADS the compact engine's; engines without settings (lucene, here) open
    with their defaults."""
    from service.core.config import Settings
    from service.search.indexes import search_threads

    monkeypatch.setenv("LEXVLA_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LEXVLA_QDRANT_API_KEY", "secret")
    monkeypatch.setenv("LEXVLA_MMAP", "true")
    options = index_options(Settings())
    assert set(options) == {"memory", "qdrant", "compact"} and options["memory"] == {"mmap": True}
    assert options["compact"] == {"threads": search_threads(1)}  # a worker's share of the cores
    qdrant = engine("qdrant").options("open", options["qdrant"])
    assert qdrant.connection()["url"] == "http://qdrant:6333"
    assert qdrant.connection()["api_key"] == "secret"
    assert qdrant.timeout_s == Settings().qdrant_timeout_s
