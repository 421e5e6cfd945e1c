"""Search latency, memory and pruned-search recall of the index engines on synthetic corpora.

    python bench/index_search.py --n 100000                      # memory engine, quick
    python bench/index_search.py --n 1000000 --engines memory,lucene --out runs/bench-1m.json
    python bench/index_search.py --n 100000 --engines memory,qdrant \
        --qdrant-configs float32-ram,float32-disk,float16-disk,uint8-disk

Corpora and queries come from bench/index_synthetic.py (LexVLA-like statistics: ~1,000 active of
17,234 words per image, Zipf word frequencies; queries of 30/100/300 words). For each query size
it reports exact search p50/p99 (one query at a time, one process), then for each pruning setting
p50/p99 and recall@10 against exact search, then the Lucene engine's (build time, p50/p99,
recall@10 against exact), then Qdrant Edge's for each ``--qdrant-configs`` entry (value type and
RAM/disk; build time, disk, resident memory after the build, p50/p99, recall@10). Memory is the
index's array bytes and the process's peak RSS. Build memory at 1M: bench/qdrant_build.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_synthetic import make_corpus, make_queries
from indexer.engines.memory import MemoryIndex, Pruning

PRUNINGS = {
    "m64-d20k-c1000": Pruning(64, 20_000, 1000, posting_budget=None),
    "m32-d20k-c1000": Pruning(32, 20_000, 1000, posting_budget=None),
    "m64-d50k-c2000": Pruning(64, 50_000, 2000, posting_budget=None),
    "m128-d50k-c2000": Pruning(128, 50_000, 2000, posting_budget=None),
    "m64-all-c1000": Pruning(64, None, 1000, posting_budget=None),
    "budget500k-c1000": Pruning(None, None, 1000, 500_000),
    "budget1m-c2000": Pruning(None, None, 2000, 1_000_000),
    "budget2m-c2000": Pruning(None, None, 2000, 2_000_000),
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def timed(fn, queries) -> tuple[list, np.ndarray]:
    results, times = [], []
    for i in range(queries.shape[0]):
        q = queries[i]
        t = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - t)
    return results, np.array(times) * 1e3


def stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}  # fmt: skip


def recall(found: list, exact: list, k: int = 10) -> float:
    hits = [len({i for i, _ in f[:k]} & {i for i, _ in e[:k]}) / max(1, min(k, len(e)))
            for f, e in zip(found, exact, strict=True)]  # fmt: skip
    return round(float(np.mean(hits)), 4)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images")
    ap.add_argument("--queries", type=int, default=200, help="queries per query size")
    ap.add_argument("--words", default="30,100,300", help="active words per query")
    ap.add_argument("--kind", default="topics", choices=["topics", "random"])
    ap.add_argument("--engines", default="memory", help="memory and/or lucene, comma-separated")
    ap.add_argument(
        "--prunings",
        default="m64-d20k-c1000,budget500k-c1000,budget1m-c2000,budget2m-c2000",
        help=f"pruning settings to try, of: {', '.join(PRUNINGS)}",
    )
    ap.add_argument("--scale", type=float, default=100.0, help="lucene quantisation scale")
    ap.add_argument("--lucene-dir", default=None, help="keep the lucene index here")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    ap.add_argument(
        "--qdrant-configs",
        default="float32-ram,float32-disk,float16-disk,uint8-disk",
        help="qdrant engine settings to try: <float32|float16|uint8>-<ram|disk>, comma-separated",
    )
    ap.add_argument("--qdrant-optimize-every", type=int, default=100_000)
    ap.add_argument("--qdrant-dir", default=None, help="build the Qdrant shards under this folder")
    args = ap.parse_args(argv)
    engines = args.engines.split(",")
    sizes = [int(w) for w in args.words.split(",")]
    report: dict = {"n": args.n, "kind": args.kind, "queries": args.queries, "sizes": {}}

    t = time.time()
    corpus = make_corpus(args.n, kind=args.kind)
    ids = [str(i) for i in range(args.n)]
    report["generate_s"] = round(time.time() - t, 1)
    report["active_per_image"] = round(corpus.rows.nnz / args.n, 1)
    queries = {m: make_queries(corpus, args.queries, m, kind=args.kind, seed=m) for m in sizes}
    print(f"corpus {args.n} x {corpus.rows.shape[1]}, {report['active_per_image']} active/image, "
          f"generated in {report['generate_s']} s", flush=True)  # fmt: skip

    index = MemoryIndex.create(corpus.rows.shape[1])
    t = time.time()
    index.add(ids, corpus.rows)
    index.build()
    report["memory_build_s"] = round(time.time() - t, 1)
    arrays = [index._forward, index._inverted]
    report["memory_index_gb"] = round(
        sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in arrays) / 1e9, 2
    )
    exact: dict[int, list] = {}
    for m in sizes:
        row: dict = {}
        exact[m], ms = timed(lambda q: index.search(q, 10), queries[m])
        row["exact"] = stats(ms)
        for name in args.prunings.split(","):
            p = PRUNINGS[name]
            found, ms = timed(lambda q, p=p: index.search(q, 10, pruning=p), queries[m])
            row[name] = {**stats(ms), "recall@10": recall(found, exact[m])}
        report["sizes"][m] = row
        print(f"memory m={m}: {json.dumps(row)}", flush=True)
    report["memory_peak_rss_gb"] = round(peak_rss_gb(), 2)

    if "lucene" in engines or "qdrant" in engines:
        del index, arrays
    if "lucene" in engines:
        report["lucene"] = bench_lucene(args, corpus.rows, ids, queries, exact)
    if "qdrant" in engines:
        report["qdrant"] = bench_qdrant(args, corpus.rows, ids, queries, exact)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


def bench_lucene(args, rows, ids, queries, exact) -> dict:
    from indexer.engines.lucene import LuceneIndex

    out: dict = {"scale": args.scale}
    index = LuceneIndex.create(rows.shape[1], scale=args.scale, rescore=True)
    t = time.time()
    index.add(ids, rows)
    out["build_s"] = round(time.time() - t, 1)
    if args.lucene_dir:
        index.save(args.lucene_dir)
    lucene_dir = index._lucene_dir
    out["index_gb"] = round(sum(f.stat().st_size for f in lucene_dir.iterdir()) / 1e9, 2)
    for m, qs in queries.items():
        index.search(qs[0], 10)  # warm-up (JIT, searcher)
        found, ms = timed(lambda q: index.search(q, 10), qs)
        out[m] = {**stats(ms), "recall@10": recall(found, exact[m])}
        print(f"lucene m={m}: {json.dumps(out[m])}", flush=True)
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return out


def bench_qdrant(args, rows, ids, queries, exact) -> dict:
    """Qdrant Edge (in-process) for each of ``args.qdrant_configs``: build, disk, RSS, latency."""
    import shutil
    import tempfile

    from indexer.engines.qdrant import QdrantIndex, disk_bytes

    out: dict = {}
    for config in args.qdrant_configs.split(","):
        datatype, place = config.split("-")
        root = Path(tempfile.mkdtemp(prefix="bench-qdrant-", dir=args.qdrant_dir))
        index = QdrantIndex.create(
            rows.shape[1],
            datatype=datatype,
            on_disk=place == "disk",
            optimize_every=args.qdrant_optimize_every,
            workdir=root / "work",
        )
        t = time.time()
        index.upsert(ids, rows)
        index.optimize()
        row: dict = {"build_s": round(time.time() - t, 1)}
        index.save(root / "version")  # as published: the shard moves into the version folder
        row["disk_gb"] = round(disk_bytes(root / "version") / 1e9, 2)
        row["rss_after_build_gb"] = round(current_rss_gb(), 2)
        for m, qs in queries.items():
            index.search(qs[0], 10)  # warm-up
            found, ms = timed(lambda q, index=index: index.search(q, 10), qs)
            row[m] = {**stats(ms), "recall@10": recall(found, exact[m])}
        out[config] = row
        print(f"qdrant {config}: {json.dumps(row)}", flush=True)
        index.close()
        shutil.rmtree(root, ignore_errors=True)
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return out


def current_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


if __name__ == "__main__":
    main()
