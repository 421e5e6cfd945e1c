"""The costs of a pruned compact search's own steps, in postings of exact search: what the
planner's constants (``indexer/engines/compact/search.py``: RESCORE_COST, PLAN_COST,
PRUNED_COST) are, fitted on end-to-end timings.

    python bench/compact_costs.py --index INDEX_DIR --queries queries-30.npz queries-300.npz
    python bench/compact_costs.py --compare --index INDEX_DIR --queries ...

Over a saved compact index and files of queries (bench/index_search.py writes both kinds under
its work directory), each query is searched exactly and pruned (its steps priced at nothing,
so that it is pruned), in turn, the best of three on the engine's own threads, as served:

- exact time = fixed + a posting's time x the query's postings (least squares);
- PLAN_COST: the plan's own time per query word;
- RESCORE_COST: what the pruned searches cost beyond the fixed time, the postings their plans
  read and their plans, per forward entry of their candidates (all in postings: each time
  divided by a posting's). The number of candidates follows the query's length, so a fixed
  part (PRUNED_COST) cannot be told apart from it and is left at 0.

The steps' single costs (a heap push, one re-scored entry) measured apart came out several
times smaller than their share of a real search (threads hand work over, rows come from DRAM
at random): the planner uses these end-to-end figures.

``--compare`` times exact search, the planner that priced only re-scoring (3 postings a
forward entry) and the planner with the module's constants, queries interleaved.
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


def planned_read(snap, words: np.ndarray, weights: np.ndarray, threshold: float) -> int:
    """Postings whose contribution reaches ``threshold`` (the planner's own count)."""
    reference = np.arange(256) * float(snap.scales.max())
    counts = snap.counts[words]
    keep = weights.astype(np.float64)[:, None] * reference[None, :] >= threshold
    return int(counts[keep].sum())


def measure(index_dir: Path, query_sets: list[sp.csr_matrix], count: int) -> dict:
    from indexer.engines.compact import search as S
    from indexer.engines.compact.index import CompactIndex

    index = CompactIndex.open(index_dir, mmap=True, threads=None, populate=True)
    snap, settings = index._snapshot(), index.pruning
    names = ("RESCORE_COST", "PLAN_COST", "PRUNED_COST")
    own = tuple(getattr(S, name) for name in names)
    exact, pruned = [], []
    for queries in query_sets:
        for i in range(min(count, queries.shape[0])):
            q = queries[i]
            w, x = q.indices.astype(np.int32), q.data.astype(np.float32)
            ms, _ = best_ms(lambda q=q: index.search(q, 40, pruning=None))
            exact.append((int(snap.counts[w].sum()), ms))
            for attr in names:
                setattr(S, attr, 0.0)
            plan_ms, (threshold, cap) = best_ms(
                lambda w=w, x=x: index._scorer.plan(snap, w, x, settings, 40)
            )
            if threshold > 0:
                ms, _ = best_ms(lambda q=q: index.search(q, 40))
                row = snap.postings_per_row
                read = planned_read(snap, w, x, threshold)
                pruned.append((read, cap * row, len(w), plan_ms, ms))
            for attr, value in zip(names, own, strict=True):
                setattr(S, attr, value)
    e = np.array(exact, dtype=float)
    per_posting, fixed = np.polyfit(e[:, 0], e[:, 1], 1)
    report: dict = {
        "rows": sum(b.rows for b in snap.blocks),
        "threads": index._scorer.threads,
        "exact_queries": len(exact),
        "ns_per_posting": round(per_posting * 1e6, 3),
        "fixed_ms": round(fixed, 3),
    }
    if pruned:
        p = np.array(pruned, dtype=float)
        plan = np.sum(p[:, 3]) / np.sum(p[:, 2]) / per_posting  # per query word, in postings
        # what the pruned search cost beyond its postings and its plan, in postings
        extra = (p[:, 4] - fixed - per_posting * p[:, 0] - p[:, 3]) / per_posting
        report |= {
            "pruned_queries": len(pruned),
            "RESCORE_COST": round(float(np.sum(extra) / np.sum(p[:, 1])), 2),
            "PLAN_COST": round(float(plan), 1),
            "PRUNED_COST": 0,
        }
    return report


PLANNERS = {  # step costs (RESCORE_COST, PLAN_COST, PRUNED_COST) of a planner
    "exact": None,
    "rescoring only": (3.0, 0.0, 0.0),  # the planner before it priced its own steps
    "every step": None,  # the module's constants
}


def compare(index_dir: Path, query_sets: list[sp.csr_matrix], count: int) -> dict:
    """Latency of exact search and of the two planners, the queries interleaved (query i of
    each, in turn) so that a noisy machine slows all three alike; engine order, top 40."""
    from indexer.engines.compact import search as S
    from indexer.engines.compact.index import CompactIndex

    index = CompactIndex.open(index_dir, mmap=True, threads=None, populate=True)
    names = ("RESCORE_COST", "PLAN_COST", "PRUNED_COST")
    own = tuple(getattr(S, name) for name in names)
    report: dict = {}
    for queries in query_sets:
        m = int(np.median(np.diff(queries.indptr)))
        times: dict[str, list[float]] = {name: [] for name in PLANNERS}
        pruned = {name: 0 for name in PLANNERS}
        for i in range(min(count, queries.shape[0])):
            q = queries[i]
            for name, costs in PLANNERS.items():
                for attr, value in zip(names, costs or own, strict=True):
                    setattr(S, attr, value)
                w, x = q.indices.astype(np.int32), q.data.astype(np.float32)
                pruning = None if name == "exact" else index.pruning
                pruned[name] += index._scorer.plan(index._snapshot(), w, x, pruning, 40)[0] > 0
                start = time.perf_counter()
                index.search(q, 40, pruning=pruning)
                times[name].append((time.perf_counter() - start) * 1e3)
        report[m] = {
            name: {"p50_ms": round(float(np.median(t)), 3), "pruned": pruned[name]}
            for name, t in times.items()
        }
    for attr, value in zip(names, own, strict=True):
        setattr(S, attr, value)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="a saved compact index (its directory)")
    ap.add_argument("--queries", nargs="+", required=True, help="scipy .npz CSR query files")
    ap.add_argument("--count", type=int, default=40, help="queries of each file")
    ap.add_argument(
        "--compare", action="store_true", help="time exact search and both planners instead"
    )
    args = ap.parse_args(argv)
    run = compare if args.compare else measure
    from bench.serve import machine

    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "bench/compact_costs.py", *(argv or sys.argv[1:])]),
        "results": run(Path(args.index), [sp.load_npz(f) for f in args.queries], args.count),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
