"""Search engines side by side on one synthetic corpus: latency, recall, build time, memory, disk.

    python bench/index_search.py --n 100000 --kind topics --engines compact,memory,scipy
    python bench/index_search.py --n 1000000 --kind random \\
        --engines compact,compact:pruning=none,memory:pruning=default,scipy,qdrant --out runs/1m.json

Corpora and queries come from bench/index_synthetic.py (LexVLA-like statistics: ~1,000 active of
17,234 words per image, Zipf word frequencies; queries of 30/100/300 words; *topics*: each query
describes one image, the realistic case; *random*: no structure, the worst case for pruning). The
corpus is generated once and cached under ``--workdir`` (memory-mapped by every process).

For every engine, one process builds the index from the corpus in store-sized chunks and saves
it; once its writes are on the disk (``os.sync``: a deployment serves an index some time after
the batch job that built it, not while the kernel is still writing it back), a fresh process opens
it and runs the queries: one at a time (p50/p99 latency), then from
``--clients`` threads (queries/s). Each query asks for 40 hits, as the service does for an engine
whose scores are not exact (top 10 x re-score factor 4). Reported per query size:

- ``recall@10``: overlap of the engine's first 10 with the exact float32 top 10;
- ``rescored@10``: the same after re-scoring the engine's 40 hits with exact float32 scores,
  which is what the service returns (it re-scores from the corpus store);
- build time, peak resident memory while building (all and anonymous), disk, and resident
  memory while serving (a memory-mapped index counts only the pages its queries touched).

The exact reference (:func:`exact_top10`) is cached beside the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_synthetic import cached_corpus, make_queries

K = 40  # hits asked of every engine (service: top 10 x re-score factor 4)
HERE = Path(__file__).resolve().parent


def queries_and_reference(workdir: Path, n: int, kind: str, count: int, sizes: list[int]):
    """Query files per size and the exact float32 top 10 of each query (cached)."""
    corpus = cached_corpus(workdir, n, kind)
    files, reference = {}, {}
    for m in sizes:
        stem = workdir / f"corpus-{n}-{kind}-0" / f"queries-{m}-{count}"
        qfile, rfile = stem.with_suffix(".npz"), stem.with_suffix(".ref.npy")
        if not qfile.is_file():
            sp.save_npz(qfile, make_queries(corpus, count, m, kind=kind, seed=m))
        if not rfile.is_file():
            np.save(rfile, exact_top10(corpus.rows, sp.load_npz(qfile)))
        files[m], reference[m] = str(qfile), np.load(rfile)
    return corpus, files, reference


def exact_top10(rows: sp.csr_matrix, queries: sp.csr_matrix, chunk: int = 50_000) -> np.ndarray:
    """Each query's exact top 10 rows (float64 dot products of the float32 rows, ties by row,
    scores of 0 left out: -1), over ``chunk`` rows at a time, so that a memory-mapped corpus
    costs page cache and one chunk of memory rather than an inverted copy of itself."""
    count = queries.shape[0]
    top_s = np.full((count, 10), -np.inf)
    top_r = np.full((count, 10), -1, dtype=np.int64)
    by_word = sp.csr_matrix(queries.T, dtype=np.float64)
    for start in range(0, rows.shape[0], chunk):
        part = sp.csr_matrix(rows[start : start + chunk], dtype=np.float64)
        scores = (part @ by_word).toarray()  # rows of the chunk x queries
        for i in range(count):
            col = scores[:, i]
            kth = np.partition(col, -10)[-10] if len(col) > 10 else 0.0
            hit = np.flatnonzero((col >= kth) & (col > 0))
            s = np.concatenate([top_s[i], col[hit]])
            r = np.concatenate([top_r[i], hit + start])
            order = np.lexsort((r, -s))[:10]
            top_s[i], top_r[i] = s[order], r[order]
    return np.where(np.isfinite(top_s), top_r, -1)


def run_step(step: str, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        spec = {**spec, "result": out.name}
        proc = subprocess.run(
            [sys.executable, str(HERE / "search_engines.py"), step, json.dumps(spec)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
        return json.loads(Path(out.name).read_text())


def recalls(
    corpus, qfile: str, found: list[list[str]], reference: np.ndarray
) -> tuple[float, float]:
    """(recall@10 of the engine's order, recall@10 after exact re-scoring of its hits)."""
    qs = sp.load_npz(qfile)
    plain, rescored = [], []
    for i, ids in enumerate(found):
        truth = set(reference[i].tolist())
        rows = np.array([int(x) for x in ids], dtype=np.int64)
        plain.append(len(truth & set(rows[:10].tolist())) / 10)
        if len(rows):
            exact = np.asarray(corpus.rows[rows] @ qs[i].T.toarray()).ravel()
            rows = rows[np.lexsort((rows, -exact))]
        rescored.append(len(truth & set(rows[:10].tolist())) / 10)
    return round(float(np.mean(plain)), 4), round(float(np.mean(rescored)), 4)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images")
    ap.add_argument("--kind", default="topics", choices=["topics", "random"])
    ap.add_argument("--queries", type=int, default=200, help="queries per query size")
    ap.add_argument("--words", default="30,100,300", help="active words per query")
    ap.add_argument("--engines", default="compact,compact:pruning=none,memory,scipy",
                    help="engine specs, comma-separated between specs with ';' or ','")  # fmt: skip
    ap.add_argument("--clients", type=int, default=2, help="client threads for queries/s")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lexvla-bench"))
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(w) for w in args.words.split(",")]
    specs = _split_specs(args.engines)

    t = time.time()
    corpus, qfiles, reference = queries_and_reference(
        workdir, args.n, args.kind, args.queries, sizes
    )
    from bench.serve import machine

    report: dict = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "bench/index_search.py", *(argv or sys.argv[1:])]),
        "n": args.n, "kind": args.kind, "queries": args.queries, "k": K,
        "active_per_image": round(corpus.rows.nnz / args.n, 1),
        "prepare_s": round(time.time() - t, 1), "engines": {},
    }  # fmt: skip
    print(f"corpus {args.n} x {corpus.rows.shape[1]}, {report['active_per_image']} active/image",
          flush=True)  # fmt: skip
    for spec in specs:
        index_dir = workdir / "indexes" / f"{args.n}-{args.kind}-{_slug(spec)}"
        common = {"engine": spec, "workdir": str(workdir), "n": args.n, "kind": args.kind,
                  "index_dir": str(index_dir), "queries": qfiles, "k": K,
                  "clients": args.clients}  # fmt: skip
        result = {"build": run_step("build", common)}
        t = time.perf_counter()
        os.sync()  # the build's writes reach the disk before the timed queries, not during them
        result["build"]["sync_s"] = round(time.perf_counter() - t, 1)
        if "error" not in result["build"]:
            result["serve"] = run_step("serve", common)
            for m, row in result["serve"].get("sizes", {}).items():
                found = row.pop("found")
                row["recall@10"], row["rescored@10"] = recalls(
                    corpus, qfiles[int(m)], found, reference[int(m)]
                )
        _remove(index_dir)
        _remove(index_dir.with_name(index_dir.name + "-store"))  # a served engine's store
        report["engines"][spec] = result
        print(f"{spec}: {json.dumps(result)}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    """One row per engine: p50 / p99 ms and recall@10 (rescored) per query size, memory, disk."""
    sizes = sorted({int(m) for e in report["engines"].values()
                    for m in e.get("serve", {}).get("sizes", {})})  # fmt: skip
    head = " | ".join(f"{m} words: p50 / p99 ms, recall (rescored)" for m in sizes)
    lines = [f"| engine | {head} | qps (client threads, 100 words) | build s | build peak GB | "
             "serving RSS GB | disk GB |", "|---" * (len(sizes) + 6) + "|"]  # fmt: skip
    for spec, e in report["engines"].items():
        serve, build = e.get("serve", {}), e.get("build", {})
        if "error" in build or "error" in serve:
            lines.append(f"| {spec} | error: {build.get('error') or serve.get('error')} |")
            continue
        cells = []
        for m in sizes:
            r = serve["sizes"].get(str(m)) or serve["sizes"].get(m)
            cells.append(f"{r['p50_ms']} / {r['p99_ms']}, {r['recall@10']} ({r['rescored@10']})")
        r100 = serve["sizes"].get("100") or serve["sizes"].get(100) or {}
        qps = next((v for k, v in r100.items() if k.startswith("qps")), "")
        peak = build.get("build_peak_gb", {}).get("rss", "")
        lines.append(f"| {spec} | {' | '.join(cells)} | {qps} | {build.get('build_s', '')} | "
                     f"{peak} | {serve['serve_rss_gb']['rss']} | {build.get('disk_gb', '')} |")  # fmt: skip
    return "\n".join(lines)


def _split_specs(text: str) -> list[str]:
    """'compact,compact:pruning=none,qdrant:values=float16,on_disk=True' -> specs (an item
    with '=' and no ':' continues the previous spec's options)."""
    specs: list[str] = []
    for item in text.split(";") if ";" in text else text.split(","):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in spec)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
