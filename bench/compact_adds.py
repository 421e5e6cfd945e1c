"""The compact engine after many single-image adds, against a fresh build of the same images.

    nice -n 10 python bench/compact_adds.py --adds 20000 --out /tmp/compact-adds.json

What runs (engine level, no service): ``--adds`` synthetic images with LexVLA's statistics
(:mod:`bench.index_synthetic`, 17,234 words, ~1,000 active per image) are added one at a time
to a compact index, empty or holding ``--base`` images added in one go, the index saved into a
new folder after each add (the merge policy of :mod:`indexer.engines.compact.merge` runs in
every save; the folder before last is removed, as a pruned index directory would lose it). The index stays open between saves, as a writer
that keeps it would: a save links the blocks the previous one wrote. Then the same images are
built in one go (``expected_rows``) and both indexes, opened from their folders, answer the same
``--queries`` topical queries of ``--words`` words.

Reported per index: blocks, bytes on disk, the recorded quantisation error (the largest over
blocks, and ``score_error`` of the queries), search p50 with the default pruning and exact,
recall@10 against the float dot products, and how many of 40 candidates the service's exact
re-scoring would fetch for a top-10 (:func:`indexer.scoring.within_reach`); for the adds, the
seconds per add (p50, p99, max, total) and the overlap of their top-10s with the fresh build's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_synthetic import VOCAB, make_corpus, make_queries  # noqa: E402
from bench.serve import machine  # noqa: E402
from indexer.engines.compact.index import CompactIndex  # noqa: E402
from indexer.scoring import within_reach  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def single_adds(
    rows: sp.csr_matrix, ids: list[str], base: int, work: Path
) -> tuple[Path, list[float]]:
    """Add the first ``base`` rows at once, then the others one at a time, saving after each;
    the last folder and seconds per single add."""
    index = CompactIndex.create(VOCAB, expected_rows=len(ids))
    if base:
        index.add(ids[:base], rows[:base])
    seconds, folders = [], []
    for n in range(base, len(ids)):
        image_id = ids[n]
        start = time.perf_counter()
        index.add([image_id], rows[n])
        folders.append(work / f"v{n:06d}")
        index.save(folders[-1])
        seconds.append(time.perf_counter() - start)
        if len(folders) > 2:
            shutil.rmtree(folders.pop(0))
        if (n + 1) % 1000 == 0:
            print(f"{n + 1} adds, {len(index._snap.blocks)} blocks", file=sys.stderr, flush=True)
    return folders[-1], seconds


def measure(path: Path, queries: sp.csr_matrix, truth: list[set[str]]) -> dict:
    index = CompactIndex.open(path)
    report: dict = {
        "blocks": len(index._snap.blocks),
        "block_rows": [b.rows for b in index._snap.blocks],
        "bytes": folder_bytes(path),
        "largest_error": max(index._errors),
        "score_error_mean": float(np.mean([index.score_error(q) for q in queries])),
    }
    for name, pruning in (("pruned", index.pruning), ("exact", None)):
        index.search(queries[0], 10, pruning=pruning)  # compiled, pages mapped
        times, recall, tops, reach = [], [], [], []
        for q in range(queries.shape[0]):
            start = time.perf_counter()
            hits = index.search(queries[q], 40, pruning=pruning)
            times.append(time.perf_counter() - start)
            top = [h[0] for h in hits[:10]]
            tops.append(top)
            recall.append(len(set(top) & truth[q]) / 10)
            reach.append(len(within_reach(index, queries[q], hits, 10)))
        report[name] = {
            "p50_ms": 1000 * float(np.median(times)),
            "recall_at_10": float(np.mean(recall)),
            "rescored_of_40": float(np.mean(reach)),
        }
        report[f"_{name}_tops"] = tops
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--adds", type=int, default=20_000, help="single-image adds")
    ap.add_argument("--base", type=int, default=0, help="images added in one go first")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--words", type=int, default=30, help="active words per query")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: stdout)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="compact-adds-", dir=args.work))
    try:
        total = args.base + args.adds
        corpus = make_corpus(total, seed=0)
        rows = sp.csr_matrix(corpus.rows, dtype=np.float32)
        ids = [f"img-{i:07d}" for i in range(total)]
        queries = make_queries(corpus, args.queries, args.words, seed=1)
        exact = (rows @ queries.T).T.toarray()
        truth = [{ids[i] for i in np.argsort(-exact[q], kind="stable")[:10]} for q in
                 range(args.queries)]  # fmt: skip
        start = time.perf_counter()
        last, seconds = single_adds(rows, ids, args.base, work / "adds")
        added_s = time.perf_counter() - start
        fresh = CompactIndex.create(VOCAB, expected_rows=total)
        fresh.add(ids, rows)
        fresh.save(work / "fresh")
        after = measure(last, queries, truth)
        built = measure(work / "fresh", queries, truth)
        overlap = [
            len(set(a) & set(b)) / 10
            for a, b in zip(after.pop("_pruned_tops"), built.pop("_pruned_tops"), strict=True)
        ]
        after.pop("_exact_tops"), built.pop("_exact_tops")
        after["seconds_per_add"] = {
            "p50": float(np.median(seconds)), "p99": float(np.quantile(seconds, 0.99)),
            "max": float(max(seconds)), "total": added_s,
        }  # fmt: skip
        after["top10_overlap_with_fresh"] = float(np.mean(overlap))
        report = {
            "machine": machine(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/compact_adds.py " + " ".join(argv or sys.argv[1:]),
            "base": args.base, "adds": args.adds, "queries": args.queries, "words": args.words,
            "after_single_adds": after, "fresh_build": built,
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return report


if __name__ == "__main__":
    main()
