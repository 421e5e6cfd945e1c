"""The costs of a compact search's steps, in postings accumulated: what the planner's constants
(``indexer/engines/compact/search.py``: RESCORE_COST, HEAP_COST, PLAN_COST, PRUNED_COST) are.

    python bench/compact_costs.py --index INDEX_DIR --queries queries-30.npz queries-300.npz

One thread, the best of three runs of each step, over a saved compact index and a file of
queries (bench/index_search.py writes both kinds of file under its work directory):

- a posting: exact scoring's time regressed on the postings it reads (the intercept is the
  per-row work that exact and pruned search share);
- a heap push: the same threshold scored into heaps of 40 and of the planned candidates, the
  time difference over the difference of :func:`heap_pushes`;
- a re-scored forward entry, a planned query word, and the fixed rest of a pruned search
  (its time less the parts above).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_ms(fn, reps: int = 3):
    """(best time of ``reps`` calls in ms, the last result)."""
    best, out = np.inf, None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3, out


def measure(index_dir: Path, query_sets: list[sp.csr_matrix], count: int) -> dict:
    from indexer.engines import engine
    from indexer.engines.compact import search as S

    chosen = engine("compact")
    index = chosen.open(index_dir, chosen.options("open", {"mmap": True}))
    snap, settings, scorer = index._snapshot(), index.pruning, S.Scorer(1)
    rows = sum(b.rows for b in snap.blocks)
    exact, heap, rescore, plan, pruned = [], [], [], [], []
    for queries in query_sets:
        for i in range(min(count, queries.shape[0])):
            q = queries[i]
            w, x = q.indices.astype(np.int32), q.data.astype(np.float32)
            ms, _ = best_ms(lambda w=w, x=x: scorer.score(snap, w, x, 0.0, 40))
            exact.append((int(snap.counts[w].sum()), ms))
            ms, (threshold, cap) = best_ms(lambda w=w, x=x: scorer.plan(snap, w, x, settings, 40))
            plan.append((len(w), ms))
            if threshold <= 0:
                continue
            small, _ = best_ms(lambda w=w, x=x, t=threshold: scorer.score(snap, w, x, t, 40))
            large, (_, docs) = best_ms(
                lambda w=w, x=x, t=threshold, c=cap: scorer.score(snap, w, x, t, c)
            )
            heap.append((S.heap_pushes(cap, rows) - S.heap_pushes(40, rows), large - small))
            ms, _ = best_ms(lambda w=w, x=x, d=docs: scorer.rescore(snap, d, w, x))
            rescore.append((len(docs) * snap.postings_per_row, ms))
            ms, _ = best_ms(lambda w=w, x=x: scorer.search(snap, w, x, 40, 0, None, settings))
            pruned.append((ms, large, rescore[-1][1], plan[-1][1]))
    e = np.array(exact, dtype=float)
    per_posting, shared = np.polyfit(e[:, 0], e[:, 1], 1)  # ms per posting, per-row work
    ns = per_posting * 1e6
    report = {"rows": rows, "ns_per_posting": round(ns, 3), "shared_row_work_ms": round(shared, 3)}
    p = np.array(plan, dtype=float)
    report["PLAN_COST"] = round(float(np.sum(p[:, 1]) / np.sum(p[:, 0]) * 1e6 / ns), 1)
    if heap:
        h, r, f = np.array(heap), np.array(rescore), np.array(pruned)
        report["HEAP_COST"] = round(float(np.sum(h[:, 1]) / np.sum(h[:, 0]) * 1e6 / ns), 1)
        report["RESCORE_COST"] = round(float(np.sum(r[:, 1]) / np.sum(r[:, 0]) * 1e6 / ns), 2)
        rest = f[:, 0] - f[:, 1] - f[:, 2] - f[:, 3]
        report["PRUNED_COST"] = round(float(np.median(rest)) * 1e6 / ns)
        report["pruned_queries"] = len(heap)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="a saved compact index (its directory)")
    ap.add_argument("--queries", nargs="+", required=True, help="scipy .npz CSR query files")
    ap.add_argument("--count", type=int, default=40, help="queries of each file")
    args = ap.parse_args(argv)
    report = measure(Path(args.index), [sp.load_npz(f) for f in args.queries], args.count)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
