"""Engine runners for bench/index_search.py: build an index, then serve queries, in fresh processes.

Each step runs in its own process (``python bench/search_engines.py STEP SPEC_JSON``) so that
its memory is its own: *build* reads the memory-mapped corpus in store-sized chunks, adds them to
the engine and saves it; *serve* opens the saved index (memory-mapped where the engine can), runs
every query one at a time and then from several client threads, and reports latency, the top ids
and the process's resident memory (anonymous + file-backed pages: a mapped index counts only the
pages its queries touched). A background thread samples ``/proc/self/status`` for the peaks.

An engine spec is ``name[:key=value,...]``: ``memory``, ``memory:pruning=default``, ``compact``,
``compact:pruning=none``, ``compact:budget=0.05,candidates=500``, ``compact:served=True``
(searched as the service does: a corpus store is written beside the index, and a page of 10 is
re-scored from its float rows, :func:`indexer.scoring.search`), ``scipy`` (a plain CSR product
over the inverted matrix: the baseline any engine must beat), ``lucene:scale=100``, and
``qdrant:...`` (options passed to the engine as given). ``prebuilt=DIR`` serves an index built
elsewhere instead of building one (``DIR/version``: bench/filtered_search.py's cached Qdrant
index; ``DIR/CURRENT``: a published index, e.g. bench/serve.py's compact one; ids ``img-%07d``
are the corpus rows), with ``store=DIR`` the corpus store a served engine re-scores from.
"""

from __future__ import annotations

import ast
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_synthetic import cached_corpus
from indexer.engines.base import top_k

CHUNK = 8192  # rows per add(): the size of a few corpus-store shards


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


class MemoryProbe:
    """Peak resident memory of this process, sampled every 20 ms (GB)."""

    def __init__(self) -> None:
        self.peak = {"rss": 0.0, "anon": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict[str, float]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1e6  # kB -> GB
        return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"]}

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = self.now()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now[key])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 2) for k, v in self.peak.items()}


SERVING_OPTIONS = ("served", "prebuilt", "store")  # how a spec is served, not the engine's


def compact_pruning(options: dict[str, Any]) -> Any:
    """A compact spec's pruning settings (None: ``pruning=none``, exact search)."""
    from indexer.engines.compact.pruning import ImpactPruning

    opts = {k: v for k, v in options.items() if k not in SERVING_OPTIONS}
    return None if opts.pop("pruning", "default") == "none" else ImpactPruning(**opts)


def create_engine(name: str, options: dict[str, Any], vocabulary_size: int, n: int, spill: Path):
    from indexer.engines import engine
    from indexer.engines.engine import BuildHints

    opts = dict(options)
    if name == "memory":
        from indexer.engines.memory.search import Pruning

        opts = {"pruning": Pruning() if opts.get("pruning") == "default" else None}
    elif name == "compact":
        opts = {"pruning": compact_pruning(opts)}
    elif name == "lucene":
        opts = {"scale": float(opts.get("scale", 100)), "rescore": True}
    elif name == "qdrant":  # Qdrant Edge: datatype=float32|float16|uint8, on_disk=True|False
        opts = {**opts, "workdir": spill / "qdrant"}
    chosen = engine(name)
    checked = chosen.options("build", opts)
    return chosen.create(vocabulary_size, "", "", None, checked, BuildHints(n, spill))


def open_engine(name: str, path: Path) -> Any:
    from indexer.engines import engine

    chosen = engine(name)
    mmap = {"mmap": True} if name in ("memory", "compact", "lucene") else {}
    return chosen.open(path, chosen.options("open", mmap))


def prebuilt_version(path: str) -> Path:
    """The saved version of a prebuilt index directory (``version`` or ``versions/CURRENT``)."""
    top = Path(path)
    if (top / "version").is_dir():
        return top / "version"
    return top / "versions" / (top / "CURRENT").read_text().strip()


def open_index(name: str, options: dict[str, Any], index_dir: Path) -> Any:
    """The index a serve step searches: the one built into ``index_dir``, or a prebuilt one
    (a compact one then searched with the spec's pruning, as if built with it)."""
    if not options.get("prebuilt"):
        return open_engine(name, index_dir)
    index = open_engine(name, prebuilt_version(options["prebuilt"]))
    if name == "compact":
        index.pruning = compact_pruning(options)
    return index


def store_dir(index_dir: Path) -> Path:
    """Where a served engine's corpus store is written (beside its index)."""
    return index_dir.with_name(index_dir.name + "-store")


def synthetic_vocabulary(size: int) -> Any:
    from model.vocabulary import Vocabulary

    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [f"▁{letters[i % 26]}{letters[i // 26 % 26]}{letters[i // 676]}" for i in range(size)]
    return Vocabulary(list(range(size)), words)


def write_store(path: Path, rows: sp.csr_matrix) -> None:
    """A corpus store of ``rows`` (ids "0", "1", ...), in shards of :data:`CHUNK` rows."""
    import shutil

    from indexer.decode import ImageInfo
    from indexer.store import CorpusStore

    shutil.rmtree(path, ignore_errors=True)
    store = CorpusStore.create(path, synthetic_vocabulary(rows.shape[1]), "synthetic", 0.0)
    for start in range(0, rows.shape[0], CHUNK):
        ids = [str(i) for i in range(start, min(rows.shape[0], start + CHUNK))]
        records = [ImageInfo(i, "", 0, "synthetic", 0, 0, "") for i in ids]
        store.append_shard(ids, rows[start : start + len(ids)], records)
    store.close()


def served_search(index: Any, store_path: Path) -> Any:
    """Search as the service does (its default settings): the engine's candidates re-scored
    exactly from the corpus store's float rows (:func:`indexer.scoring.search`), a page of 10
    with 20 matched words listed per hit."""
    from indexer import scoring
    from indexer.store import CorpusStore

    store = CorpusStore.open(store_path)

    def search(q: sp.csr_matrix, k: int) -> list[tuple[str, float]]:
        out = scoring.search(
            index, store, store.vocabulary, q, exact=index.exact, top_k=10, matched_limit=20
        )
        return [(h.id, h.score) for h in out.hits]

    return search


def build(spec: dict[str, Any]) -> dict[str, Any]:
    name, options = parse_spec(spec["engine"])
    corpus = cached_corpus(spec["workdir"], spec["n"], spec["kind"])
    rows, n = corpus.rows, corpus.rows.shape[0]
    out = Path(spec["index_dir"])
    if name == "scipy":
        return {"note": "built in the serving process"}
    if options.get("prebuilt"):
        version = prebuilt_version(options["prebuilt"])
        disk = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
        info = version.parent / "build.json"
        built = json.loads(info.read_text()) if info.is_file() else {}
        return {"note": f"prebuilt: {version}", **built, "disk_gb": round(disk / 1e9, 3)}
    probe = MemoryProbe()
    t = time.perf_counter()
    spill = out.parent / f".spill-{out.name}"
    spill.mkdir(parents=True, exist_ok=True)
    index = create_engine(name, options, rows.shape[1], n, spill)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        index.add([str(i) for i in range(start, stop)], rows[start:stop])
    if hasattr(index, "build"):
        index.build()
    elif hasattr(index, "optimize"):  # qdrant: merge and index the last segments
        index.optimize()
    index.save(out)
    seconds = time.perf_counter() - t
    if options.get("served"):
        write_store(store_dir(out), rows)
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    import shutil

    shutil.rmtree(spill, ignore_errors=True)
    return {
        "build_s": round(seconds, 1),
        "build_peak_gb": probe.stop(),
        "disk_gb": round(disk / 1e9, 3),
    }


def serve(spec: dict[str, Any]) -> dict[str, Any]:
    name, _options = parse_spec(spec["engine"])
    queries = {int(m): sp.load_npz(p) for m, p in spec["queries"].items()}
    probe = MemoryProbe()
    t = time.perf_counter()
    if name == "scipy":
        corpus = cached_corpus(spec["workdir"], spec["n"], spec["kind"])
        inverted = sp.csr_matrix(corpus.rows.T, dtype=np.float32).tocsr()
        del corpus

        def search(q: sp.csr_matrix, k: int) -> list[tuple[str, float]]:
            scores = sp.csr_matrix(q @ inverted)
            best, rows = top_k(scores.data, scores.indices, k)
            return [(str(r), float(s)) for r, s in zip(rows, best, strict=True)]

    elif _options.get("served"):
        index_dir = Path(spec["index_dir"])
        store = Path(_options["store"]) if _options.get("prebuilt") else store_dir(index_dir)
        search = served_search(open_index(name, _options, index_dir), store)
    else:
        index = open_index(name, _options, Path(spec["index_dir"]))

        def search(q: sp.csr_matrix, k: int) -> list[tuple[str, float]]:
            return index.search(q, k)

    open_s = time.perf_counter() - t
    k = spec["k"]
    report: dict[str, Any] = {"open_s": round(open_s, 2), "sizes": {}}
    for m, qs in queries.items():
        for i in range(min(3, qs.shape[0])):
            search(qs[i], k)  # warm-up: compile, touch the first pages
        passes = []  # the first pass reads what the queries touch (cold), the second again
        for _ in range(2):
            times, found = [], []
            for i in range(qs.shape[0]):
                start = time.perf_counter()
                hits = search(qs[i], k)
                times.append(time.perf_counter() - start)
                found.append([h[0].removeprefix("img-") for h in hits])  # ids -> corpus rows
            passes.append(np.array(times) * 1e3)
        cold, ms = passes
        clients = spec["clients"]
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i, qs=qs: search(qs[i], k), range(qs.shape[0])))
        qps = qs.shape[0] / (time.perf_counter() - start)
        report["sizes"][m] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "cold_p50_ms": round(float(np.percentile(cold, 50)), 2),
            "cold_p99_ms": round(float(np.percentile(cold, 99)), 2),
            f"qps_{clients}_clients": round(qps, 1),
            "found": found,
        }
    report["serve_rss_gb"] = {k: round(v, 2) for k, v in MemoryProbe.now().items()}
    report["serve_peak_gb"] = probe.stop()
    return report


if __name__ == "__main__":
    step, spec = sys.argv[1], json.loads(sys.argv[2])
    result = {"build": build, "serve": serve}[step](spec)
    Path(spec["result"]).write_text(json.dumps(result))
