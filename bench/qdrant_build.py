"""Qdrant Edge at scale: memory while building, disk and memory per million images, search.

    flock /work/bigmem.lock python bench/qdrant_build.py --n 1000000 --datatype float16 \\
        --work /tmp/qdrant-1m --out runs/qdrant-1m.json

Three processes, so that each number is the engine's own: (1) a child generates the synthetic
corpus (bench/index_synthetic.py: ~1,000 of 17,234 words per image) and its queries into
``--work`` as memory-mappable arrays; (2) this process builds the index from them in chunks of
``--chunk`` rows (the corpus costs page cache, never private memory) while a sampler thread
records resident memory every 0.2 s: VmRSS, and its anonymous part RssAnon (heap: what cannot be
paged out) apart from RssFile (mapped files: page cache); (3) a child opens the published version
and runs the queries one at a time (p50/p99, resident memory while serving). Recall@10 is
against brute force over the corpus arrays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.engines.base import load_csr, save_csr

SIZES = (30, 100, 300)


def memory() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile of this process in GB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1e6
    return out


class Sampler(threading.Thread):
    """Peak memory of this process, sampled."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop = every_s, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for k, v in memory().items():
                self.peak[k] = max(self.peak.get(k, 0.0), v)
            self.stop.wait(self.every_s)


def generate(work: Path, n: int, queries: int) -> None:
    from bench.index_synthetic import make_corpus, make_queries

    corpus = make_corpus(n)
    save_csr(work, "rows", corpus.rows)
    qs = sp.vstack([make_queries(corpus, queries, m, seed=m) for m in SIZES], format="csr")
    save_csr(work, "queries", qs)
    (work / "corpus.json").write_text(
        json.dumps({"n": n, "v": corpus.rows.shape[1], "queries": queries})
    )


def build(args: argparse.Namespace, rows: sp.csr_matrix) -> dict:
    from indexer.engines.qdrant.backends import disk_bytes
    from indexer.engines.qdrant.index import QdrantIndex

    sampler = Sampler()
    sampler.start()
    index = QdrantIndex.create(
        rows.shape[1],
        datatype=args.datatype,
        on_disk=not args.ram,
        optimize_every=args.optimize_every,
        segment_points=args.segment_points,
        workdir=args.work / "build",
    )
    n, timeline, start = rows.shape[0], [], time.time()
    for a in range(0, n, args.chunk):
        b = min(n, a + args.chunk)
        index.upsert([str(i) for i in range(a, b)], sp.csr_matrix(rows[a:b]))
        if (b // args.chunk) % max(1, n // args.chunk // 10) == 0 or b == n:
            timeline.append({"rows": b, "s": round(time.time() - start, 1), **_round(memory())})
            print(f"{b:>9,} rows {timeline[-1]}", flush=True)
    index.optimize()
    build_s = time.time() - start
    index.save(args.work / "version")
    index.close()
    sampler.stop.set()
    sampler.join()
    shard = args.work / "version" / "shard"
    wal = disk_bytes(shard / "wal") if (shard / "wal").exists() else 0
    return {
        "build_s": round(build_s, 1),
        "peak_build": _round(sampler.peak),
        "timeline": timeline,
        "disk_gb": round(disk_bytes(args.work / "version") / 1e9, 2),
        "wal_gb": round(wal / 1e9, 2),
    }


def serve(version: Path, queries: sp.csr_matrix, per_size: int) -> dict:
    from indexer.engines.qdrant.index import QdrantIndex

    index = QdrantIndex.open(version)
    opened = memory()
    out: dict = {"rss_opened": _round(opened), "found": []}
    for s, m in enumerate(SIZES):
        block = queries[s * per_size : (s + 1) * per_size]
        index.search(block[0], 10)
        times = []
        for i in range(block.shape[0]):
            t = time.perf_counter()
            out["found"].append([h for h, _ in index.search(block[i], 10)])
            times.append((time.perf_counter() - t) * 1e3)
        out[str(m)] = {
            "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2),
        }
    out["rss_serving"] = _round(memory())
    return out


def exact_top10(
    rows: sp.csr_matrix, queries: sp.csr_matrix, chunk: int = 100_000
) -> list[list[str]]:
    dense = queries.T.toarray().astype(np.float32)  # V x Q
    best = np.full((queries.shape[0], 10), -1.0), np.zeros((queries.shape[0], 10), dtype=np.int64)
    scores_all, ids_all = best
    for a in range(0, rows.shape[0], chunk):
        part = np.asarray(sp.csr_matrix(rows[a : a + chunk]) @ dense).T  # Q x chunk
        top = np.argpartition(-part, 10, axis=1)[:, :10]
        cand_s = np.concatenate([scores_all, np.take_along_axis(part, top, 1)], axis=1)
        cand_i = np.concatenate([ids_all, top + a], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :10]
        scores_all, ids_all = (
            np.take_along_axis(cand_s, keep, 1),
            np.take_along_axis(cand_i, keep, 1),
        )
    return [[str(i) for i in row] for row in ids_all]


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in d.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50, help="queries per query size")
    ap.add_argument("--datatype", default="float16", choices=["float32", "float16", "uint8"])
    ap.add_argument("--ram", action="store_true", help="vectors and index in RAM (not on disk)")
    ap.add_argument("--optimize-every", type=int, default=100_000)
    ap.add_argument("--segment-points", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000, help="rows per upsert call")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (corpus, index)")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--step", choices=["all", "generate", "serve"], default="all", help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step == "generate":
        generate(args.work, args.n, args.queries)
        return {}
    meta_path = args.work / "corpus.json"
    if args.step == "serve":
        meta = json.loads(meta_path.read_text())
        qs = load_csr(args.work, "queries", (3 * meta["queries"], meta["v"]), mmap=False)
        result = serve(args.work / "version", qs, meta["queries"])
        print("SERVE " + json.dumps(result), flush=True)
        return result
    if not meta_path.is_file() or json.loads(meta_path.read_text())["n"] != args.n:
        t = time.time()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--step",
                "generate",
                "--n",
                str(args.n),
                "--queries",
                str(args.queries),
                "--work",
                str(args.work),
            ],
            check=True,
        )
        print(f"generated in {time.time() - t:.0f} s", flush=True)
    meta = json.loads(meta_path.read_text())
    rows = load_csr(args.work, "rows", (meta["n"], meta["v"]), mmap=True)
    report: dict = {
        "n": meta["n"],
        "datatype": args.datatype,
        "on_disk": not args.ram,
        "optimize_every": args.optimize_every,
        "segment_points": args.segment_points,
    }
    report["active_per_image"] = round(rows.nnz / meta["n"], 1)
    import shutil

    shutil.rmtree(args.work / "build", ignore_errors=True)
    shutil.rmtree(args.work / "version", ignore_errors=True)
    report.update(build(args, rows))
    served = subprocess.run(
        [sys.executable, __file__, "--step", "serve", "--work", str(args.work)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(
        next(line[6:] for line in served.stdout.splitlines() if line.startswith("SERVE "))
    )
    qs = load_csr(args.work, "queries", (3 * meta["queries"], meta["v"]), mmap=False)
    truth = exact_top10(rows, qs)
    found = result.pop("found")
    per = meta["queries"]
    for s, m in enumerate(SIZES):
        hits = [
            len(set(f) & set(t)) / 10
            for f, t in zip(
                found[s * per : (s + 1) * per], truth[s * per : (s + 1) * per], strict=True
            )
        ]
        result[str(m)]["recall@10"] = round(float(np.mean(hits)), 4)
    report["serve"] = result
    report["per_million"] = {"disk_gb": round(report["disk_gb"] * 1e6 / meta["n"], 2)}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
