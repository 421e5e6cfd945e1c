"""Many single-image adds through the live write path, against a fresh build of the same images.

    python bench/live_adds.py --adds 100000 --out docs/results/live-adds.json
    python bench/live_adds.py --page docs/results-live-adds.md --from docs/results/live-adds.json

What runs. A corpus store and a compact index start with ``--base`` images (one batch build);
then ``--adds`` images go in one at a time through :class:`indexer.live.LiveWriter` (the code
``POST /images`` calls, under its write lock): each add commits to the store (fsynced) and
publishes its own index version, merges included, exactly as an acknowledged upload does. The
vectors are synthetic lexical rows (``bench/index_synthetic.py``, ``--words`` active words per
image) rather than encoded photos, so the figures are the write path's own cost: the model's
encoding is measured by ``bench/writes.py``. Reported:

- add latency p50/p99 per tenth of the run (a write path that costs O(corpus) grows tenth by
  tenth; one that costs O(change) stays flat);
- the index the adds left against a fresh build of the same store (``build_engine_index``):
  blocks, bytes of engine files, in-process search p50 over ``--queries`` queries of
  ``--query-words`` words, and how many of the fresh build's top 10 the live index returns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_synthetic import make_corpus, make_queries  # noqa: E402
from bench.search_engines import synthetic_vocabulary  # noqa: E402
from bench.serve import emit, machine  # noqa: E402


def prepared(image_id: str) -> object:
    """What :meth:`LiveWriter.prepare` makes of an upload, without a picture (no thumbnail)."""
    from indexer.decode import ImageInfo
    from indexer.live import Prepared
    from indexer.metadata import COLLECTION, DEFAULT_COLLECTION

    path = f"upload:{image_id}"
    metadata = {COLLECTION: DEFAULT_COLLECTION, "path": path}
    info = ImageInfo(image_id, path, 0, "synthetic", 0, 0, f"sha-{image_id}", {}, metadata)
    return Prepared(info, None, None)  # type: ignore[arg-type]


def engine_report(index_dir: Path, queries: sp.csr_matrix) -> dict:
    from indexer.engines import open_index
    from indexer.engines.versions import current_version

    version = current_version(index_dir)
    files = [f for f in version.rglob("*") if f.is_file() and "fields" not in f.parts]
    index = open_index(index_dir)
    for q in range(min(5, queries.shape[0])):
        index.search(queries[q], 10)
    times, tops = [], []
    for q in range(queries.shape[0]):
        t0 = time.perf_counter()
        hits = index.search(queries[q], 10)
        times.append((time.perf_counter() - t0) * 1e3)
        tops.append([h[0] for h in hits])
    blocks = version / "blocks"
    return {
        "images": index.count(),
        "blocks": len(list(blocks.iterdir())) if blocks.is_dir() else None,
        "bytes": sum(f.stat().st_size for f in files),
        "search_p50_ms": round(float(np.median(times)), 3),
        "search_p99_ms": round(float(np.percentile(times, 99)), 3),
        "tops": tops,
    }


def run(args: argparse.Namespace) -> dict:
    from indexer.build import build_engine_index
    from indexer.live import LiveWriter
    from indexer.store import CorpusStore

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-live-adds-"))
    shutil.rmtree(work, ignore_errors=True)
    corpus = make_corpus(args.base + args.adds, active=args.words, seed=0)
    rows = corpus.rows.astype(np.float32).tocsr()
    queries = make_queries(corpus, args.queries, args.query_words)
    store = CorpusStore.create(work / "store", synthetic_vocabulary(rows.shape[1]), "bench", 0.0)
    base_ids = [f"b{i:07d}" for i in range(args.base)]
    if base_ids:
        store.append_shard(base_ids, rows[: args.base], [prepared(i).info for i in base_ids])
    build_engine_index(store, work / "index", "compact")
    writer = LiveWriter(store, work / "index", max_pixels=1 << 24)
    started = time.perf_counter()
    latencies, versions = single_adds(writer, rows, args)
    elapsed = time.perf_counter() - started
    tenths = np.array_split(np.array(latencies), 10)
    live = engine_report(work / "index", queries)
    t0 = time.perf_counter()
    writer.optimize()
    optimize_s = time.perf_counter() - t0
    writer.close()
    optimised = engine_report(work / "index", queries)
    build_engine_index(store, work / "fresh", "compact")
    fresh = engine_report(work / "fresh", queries)
    tops = fresh.pop("tops")
    agree, agree_optimised = (
        np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(x.pop("tops"), tops, strict=True)])
        for x in (live, optimised)
    )  # fmt: skip
    store.close()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python bench/live_adds.py " + " ".join(sys.argv[1:]),
        "base": args.base, "adds": args.adds, "words": args.words,
        "query_words": args.query_words, "queries": args.queries,
        "clients": args.clients, "versions": versions,
        "adds_per_s": round(args.adds / elapsed, 1),
        "add_ms_by_tenth": [
            {"p50": round(float(np.median(t)), 2), "p99": round(float(np.percentile(t, 99)), 2)}
            for t in tenths if len(t)
        ],
        "after_adds": live, "after_optimize": optimised, "optimize_s": round(optimize_s, 1),
        "fresh_build": fresh, "top10_agreement": round(float(agree), 4),
        "top10_agreement_optimised": round(float(agree_optimised), 4),
    }  # fmt: skip


def single_adds(writer, rows: sp.csr_matrix, args: argparse.Namespace) -> tuple[list[float], int]:
    """``args.adds`` adds of one image each, from ``args.clients`` threads: one at a time
    through the writer, or concurrently through group commit as ``POST /images`` does; the
    latency of each (ms) and the number of versions published."""
    from indexer.group_commit import GroupCommit

    grouped = GroupCommit(writer)
    next_add, lock = iter(range(args.adds)), threading.Lock()
    latencies: list[float] = []
    versions: set[str] = set()

    def client() -> None:
        while True:
            with lock:
                n = next(next_add, None)
            if n is None:
                return
            t0 = time.perf_counter()
            one = [prepared(f"a{n:07d}")], rows[args.base + n]
            version = grouped.add(*one) if args.clients > 1 else writer.add(*one)
            with lock:
                latencies.append((time.perf_counter() - t0) * 1e3)
                versions.add(version)
                done = len(latencies)
            if args.progress and done % max(1, args.adds // 20) == 0:
                print(f"{done} adds, last p50 {np.median(latencies[-1000:]):.1f} ms", flush=True)

    if args.clients == 1:
        client()
        return latencies, len(versions)
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(versions)


def page(reports: list[dict]) -> str:
    lines = [
        "# Single-image adds against a fresh build",
        "",
        "Generated by `python bench/live_adds.py --page docs/results-live-adds.md --from "
        "docs/results/live-adds.json --from docs/results/live-adds-100k.json`; do not edit by "
        "hand. Each add is one image, committed to the store and published in an index version "
        "before it returns, as an acknowledged `POST /images` is (`indexer/live.py`): one at a "
        "time, each its own version, or from concurrent clients through group commit, which "
        "puts the adds that arrive during a write into the next version "
        "(`indexer/group_commit.py`). Vectors are synthetic, so the model's encoding is not "
        "included (see [live writes](results-live-writes.md)). The indexes of a section are "
        "measured in the same run, on a machine shared with other jobs: compare them with each "
        "other, not across runs. Top-10 agreement is in the engine's own quantised order (blocks "
        "of other scales round differently); the service re-scores its page from the store's "
        "float rows.",
    ]
    for r in reports:
        tenths = r["add_ms_by_tenth"]
        clients = r.get("clients", 1)
        how = (
            f"from {clients} concurrent clients through group commit, in {r['versions']:,} versions"
            if clients > 1 else "one at a time, each its own version"
        )  # fmt: skip
        lines += [
            "",
            f"## {r['date']}: {r['adds']:,} adds on {r['base']:,} images, {r['words']} words each",
            "",
            f"- machine: {r['machine']}",
            f"- command: `{r['command']}`",
            f"- adds {how}",
            f"- {r['adds_per_s']} adds/s over the run; add latency p50 / p99 ms by tenth of the "
            "run: " + ", ".join(f"{t['p50']} / {t['p99']}" for t in tenths),
            "",
            "| index | images | blocks | bytes (engine files) | search p50 / p99 ms |",
            "|---|---|---|---|---|",
        ]
        kinds = ("after adds", "after_adds"), ("after optimize", "after_optimize")
        for name, key in [*kinds, ("fresh build", "fresh_build")]:
            if key not in r:
                continue
            x = r[key]
            lines.append(
                f"| {name} | {x['images']:,} | {x['blocks']} | {x['bytes']:,} | "
                f"{x['search_p50_ms']} / {x['search_p99_ms']} |"
            )
        lines += [
            "",
            f"The live index returns {100 * r['top10_agreement']:.2f}% of the fresh build's top 10 "
            f"({r['queries']} queries of {r['query_words']} words, in-process engine search).",
        ]
        if "after_optimize" in r:
            lines.append(
                f"`LiveWriter.optimize` (what a server runs once writes pause) took "
                f"{r['optimize_s']} s; the optimised index returns "
                f"{100 * r['top10_agreement_optimised']:.2f}% of the fresh build's top 10."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=int, default=1000, help="images of the first batch build")
    p.add_argument("--adds", type=int, default=2000, help="single-image adds after it")
    p.add_argument("--words", type=int, default=300, help="active words per image")
    p.add_argument("--clients", type=int, default=1,
                   help="threads adding at once (over 1: through group commit, as the service)")  # fmt: skip
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--query-words", type=int, default=30)
    p.add_argument("--workdir", help="keep the store and indexes here (default: a temp folder)")
    p.add_argument("--progress", action="store_true", help="print the add rate as it goes")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--page", help="write the results page (Markdown) from --from reports")
    p.add_argument("--from", dest="sources", action="append", default=[])
    args = p.parse_args(argv)
    if args.page:
        reports = [json.loads(Path(s).read_text()) for s in args.sources]
        Path(args.page).write_text(page(reports))
        return 0
    return emit(run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
