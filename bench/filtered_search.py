"""Filtered search: metadata conditions passing 1%, 10% and 50% of the images, against unfiltered.

    python bench/filtered_search.py --prepare --corpus /tmp/lexvla-bench --work /tmp/filtered-bench
    python bench/filtered_search.py --index /tmp/lexvla-bench/index-1000000-17234-1000-compact \\
        --corpus /tmp/lexvla-bench --small 100000 --work /tmp/filtered-bench \\
        --out docs/results/filtered-search.json
    python bench/filtered_search.py --page docs/results-filtered-search.md \\
        --from docs/results/filtered-search.json

What runs. The corpus is bench/index_synthetic.py's 1M topics corpus (LexVLA's 17,234 words,
~1,000 active per image; image ``img-%07d`` is row i), and ``--index`` a compact index of it
(bench/serve.py builds both), opened read-only: its metadata columns are replaced in memory by
columns built here (``FieldColumns.build``) with one integer field, ``bucket``, drawn uniformly
from 0..99 per image, so ``bucket < 1|10|50`` passes 1%, 10%, 50% of the images. The first
``--small`` images are also indexed here (into ``--work``, reused by later runs) by the compact
engine and by Qdrant Edge (float32, on disk; the bucket in each point's payload with a float
payload index), as the engine builds would; all the images by Qdrant Edge too, with
``--full-datatype`` values (float16: half the disk), built once (``--prepare`` builds only that).
Queries are words-mode queries (the service's
``words`` mode: a random caption from the tiny preset's words, tokenized with the Llama 2
tokenizer, bag of words, L2-normalised).

Measured, per engine and condition, through the search layer as the service calls it
(``indexer.scoring.search``, top 10): the compact engine (approximate) both as the service serves
it by default (``exact_scores``: 4x the page re-scored from the store's float32 rows, here read
from the corpus the store was written from) and from its own rows; Qdrant float32 is exact and
scores from its own float32 rows. Reported: latency p50 / p99 of
one query at a time, the conditions interleaved query by query (so that the machine's load falls
on all alike), after a warm-up that also builds the condition masks; and recall@10 against the
exact filtered top 10 (float64 dot products of the float32 rows, restricted to the passing
images, ties by row). The first (uncached) mask of each condition is timed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_synthetic import cached_corpus  # noqa: E402

LLAMA2_TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer"
PASSING = (1, 10, 50)  # percent of the images each condition passes
CHUNK = 8192


def conditions(registry: Any) -> dict[str, Any]:
    """Condition name -> Where (None: unfiltered)."""
    from indexer.fields import parse_where

    out: dict[str, Any] = {"none": None}
    for p in PASSING:
        out[f"bucket<{p}"] = parse_where({"bucket": {"lt": p}}, registry)
    return out


def bucket_columns(buckets: np.ndarray) -> Any:
    """Columns of images img-0000000.. whose integer field ``bucket`` is ``buckets``."""
    from indexer.fields import FieldColumns
    from indexer.metadata import FieldRegistry

    registry = FieldRegistry()
    registry.declare(["bucket:integer"])
    ids = [f"img-{i:07d}" for i in range(len(buckets))]
    return FieldColumns.build(ids, [{"bucket": b} for b in buckets.tolist()], registry)


def words_queries(vocabulary: Any, count: int, seed: int) -> list[sp.csr_matrix]:
    """``count`` words-mode query rows (captions with at least one vocabulary word)."""
    from transformers import AutoTokenizer

    from bench.serve_load import captions
    from model.bag_of_words import bag_of_words_row

    tokenizer = AutoTokenizer.from_pretrained(str(LLAMA2_TOKENIZER))
    rows = [bag_of_words_row(t, tokenizer, vocabulary) for t in captions(count * 2, seed)]
    return [r for r in rows if r.nnz][:count]


def exact_tops(rows: sp.csr_matrix, queries: list[sp.csr_matrix], masks: dict) -> dict:
    """Condition -> per query the exact top 10 rows among the passing images (score > 0)."""
    words = np.unique(np.concatenate([q.indices for q in queries]))
    parts = []
    for start in range(0, rows.shape[0], 50_000):  # the query words' columns, chunk by chunk
        parts.append(sp.csr_matrix(rows[start : start + 50_000])[:, words])
    sub = sp.vstack(parts, format="csc").astype(np.float64)
    out: dict[str, list[list[int]]] = {name: [] for name in masks}
    for q in queries:
        cols = np.searchsorted(words, q.indices)
        scores = np.asarray(sub[:, cols] @ q.data.astype(np.float64)).ravel()
        for name, mask in masks.items():
            passing = np.flatnonzero((scores > 0) & mask)
            order = np.lexsort((passing, -scores[passing]))[:10]
            out[name].append(passing[order].tolist())
    return out


def cached_index(
    work: Path,
    rows: sp.csr_matrix,
    buckets: np.ndarray,
    columns: Any,
    engine: str,
    datatype: str = "float32",
) -> tuple[Any, float]:
    """The ``engine`` index of ``rows`` (built once into ``work``, reused by later runs and by
    bench/index_search.py's ``qdrant:prebuilt=DIR``) and its build seconds; ``datatype``: the
    Qdrant values (float32 keeps its scores exact; float16 halves its disk)."""
    from indexer.engines import engine as get_engine

    target = cached_path(work, engine, rows.shape[0], datatype)
    info = target / "build.json"
    if not info.is_file():
        start = time.perf_counter()
        index = _create(engine, rows.shape[1], rows.shape[0], work, columns.registry, datatype)
        ids = [f"img-{i:07d}" for i in range(rows.shape[0])]
        for a in range(0, rows.shape[0], CHUNK):
            part, block = ids[a : a + CHUNK], rows[a : a + CHUNK]
            if engine == "qdrant":
                records = [{"bucket": b} for b in buckets[a : a + CHUNK].tolist()]
                index.upsert(part, block, records=records)
            else:
                index.add(part, block)
        (index.optimize if engine == "qdrant" else index.build)()
        index.save(target / "version")
        index.close()
        info.write_text(json.dumps({"build_s": round(time.perf_counter() - start, 1)}))
    chosen = get_engine(engine)
    opened = chosen.open(
        target / "version", chosen.options("open", {"mmap": True} if engine == "compact" else {})
    )
    opened.fields = columns
    return opened, json.loads(info.read_text())["build_s"]


def cached_path(work: Path, engine: str, n: int, datatype: str = "float32") -> Path:
    """Where :func:`cached_index` keeps an index (its saved version is ``<path>/version``)."""
    return work / (f"{engine}-{n}" if datatype == "float32" else f"{engine}-{n}-{datatype}")


def _create(
    engine: str, vocabulary_size: int, n: int, work: Path, registry: Any, datatype: str
) -> Any:
    if engine == "qdrant":
        from indexer.engines.qdrant.index import QdrantIndex

        index = QdrantIndex.create(
            vocabulary_size, datatype=datatype, on_disk=True, workdir=work / f".qdrant-{n}"
        )
        index.declare_fields(registry)
        return index
    from indexer.engines.compact.index import CompactIndex

    return CompactIndex.create(vocabulary_size, expected_rows=n, spill_dir=work / f".spill-{n}")


class CorpusRows:
    """The corpus store's part in a search: the float32 rows of images (``img-%07d`` is row i),
    read from the memory-mapped corpus the store was written from."""

    def __init__(self, rows: sp.csr_matrix):
        self.rows = rows

    def vectors_of(self, ids: list[str]) -> sp.csr_matrix:
        return sp.csr_matrix(self.rows[np.array([int(i[4:]) for i in ids], dtype=np.int64)])


def measure(
    index: Any, store: Any, vocabulary: Any, queries: list, wheres: dict, tops: dict
) -> dict:
    """Per condition: p50 / p99 ms, recall@10 against ``tops`` and the first mask's ms;
    ``store``: where hits are re-scored from (None: the engine's rows)."""
    from indexer.scoring import Arrangement, search

    first_mask = {}
    for name, where in wheres.items():
        if where is not None:
            start = time.perf_counter()
            index.fields.mask(where)
            first_mask[name] = round((time.perf_counter() - start) * 1e3, 2)
    times: dict[str, list[float]] = {name: [] for name in wheres}
    recall: dict[str, list[float]] = {name: [] for name in wheres}
    for n, q in enumerate([*queries[:5], *queries]):  # the first five: warm-up
        for name, where in wheres.items():
            start = time.perf_counter()
            out = search(index, store, vocabulary, q, exact=index.exact, top_k=10,
                         arrange=Arrangement(where))  # fmt: skip
            took = (time.perf_counter() - start) * 1e3
            if n < 5:
                continue
            truth = set(tops[name][n - 5])
            found = {int(h.id[4:]) for h in out.hits}
            times[name].append(took)
            recall[name].append(len(truth & found) / len(truth) if truth else 1.0)
    return {
        name: {
            "p50_ms": round(float(np.percentile(times[name], 50)), 2),
            "p99_ms": round(float(np.percentile(times[name], 99)), 2),
            "recall@10": round(float(np.mean(recall[name])), 4),
            "first_mask_ms": first_mask.get(name),
        }
        for name in wheres
    }


def prepare(args: argparse.Namespace) -> None:
    """Build the cached Qdrant index of all the corpus (as :func:`run` would, then reuses)."""
    corpus = cached_corpus(args.corpus, 1_000_000)
    n = corpus.rows.shape[0]
    buckets = np.random.default_rng(args.seed).integers(0, 100, n)
    part = bucket_columns(buckets)
    index, build_s = cached_index(
        Path(args.work), corpus.rows, buckets, part, "qdrant", args.full_datatype
    )
    index.close()
    path = cached_path(Path(args.work), "qdrant", n, args.full_datatype)
    print(f"{path}: built in {build_s:.0f} s", flush=True)


def run(args: argparse.Namespace) -> dict:
    from bench.serve import machine
    from indexer.engines import engine as get_engine
    from model.vocabulary import Vocabulary

    corpus = cached_corpus(args.corpus, 1_000_000)
    version = sorted((Path(args.index) / "versions").glob("v*"))[-1]
    vocabulary = Vocabulary.load(Path(args.corpus) / "store-1000000-17234-1000")
    queries = words_queries(vocabulary, args.queries, seed=args.seed)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "queries": len(queries),
        "query_words": round(float(np.mean([q.nnz for q in queries])), 1),
        "runs": [],
    }
    small, full = args.small, corpus.rows.shape[0]
    buckets = np.random.default_rng(args.seed).integers(0, 100, full)
    for n in (small, full) if args.full else (small,):
        part = bucket_columns(buckets[:n])
        wheres = conditions(part.registry)
        masks = {k: buckets[:n] < int(k[7:]) if w else np.ones(n, bool) for k, w in wheres.items()}
        rows = corpus.rows if n == full else corpus.rows[:n]
        t = time.perf_counter()
        tops = exact_tops(rows, queries, masks)
        print(f"{n:,}: exact reference in {time.perf_counter() - t:.0f} s", flush=True)
        passing = {k: round(float(m.mean()), 4) for k, m in masks.items()}
        engines = ["compact", "qdrant"] if n == small or args.full_qdrant else ["compact"]
        for name in engines:
            if n == small or name == "qdrant":
                datatype = "float32" if n == small else args.full_datatype
                index, build_s = cached_index(
                    Path(args.work), rows, buckets[:n], part, name, datatype
                )
            else:
                chosen = get_engine("compact")
                index, build_s = chosen.open(version, chosen.options("open", {"mmap": True})), None
                index.fields = part
            # the service's default re-scores an approximate engine's hits from the store's rows
            modes = {"store": CorpusRows(rows), "engine": None} if name == "compact" else {}
            for scoring, store in (modes or {"engine": None}).items():
                result = measure(index, store, vocabulary, queries, wheres, tops)
                report["runs"].append({"engine": name, "images": n, "build_s": build_s,
                                       "scoring": scoring, "passing": passing,
                                       "results": result})  # fmt: skip
                if name == "qdrant":
                    report["runs"][-1]["datatype"] = datatype
                print(json.dumps(report["runs"][-1]), flush=True)
            index.close()
    return report


def engine_name(run: dict) -> str:
    if run["engine"] == "qdrant":  # runs before float16 at 1M were all float32
        return f"Qdrant Edge ({run.get('datatype', 'float32')}, on disk)"
    return run["engine"]


def qdrant_note(report: dict) -> list[str]:
    """What the Qdrant rows are (built once, cached; float16 at 1M, where float32 would need
    twice the disk)."""
    sizes = sorted({r["images"] for r in report["runs"] if r["engine"] == "qdrant"})
    if len(sizes) <= 1:
        return [
            "- Qdrant Edge at 100,000 images only: building it at 1M took about 1,000 s in "
            "earlier runs (docs/benchmarks.md), too long for this shared machine; the compact "
            "engine at 100,000 and at 1,000,000"
        ]
    return [
        "- Qdrant Edge (bucket in each point's payload, float payload index) is built once into "
        "`--work` and reused; at 1,000,000 images with float16 values (`--prepare`), whose hits "
        "the search layer re-scores from Qdrant's own float32 vectors, as the service does; its "
        "build s is that build's, on the same shared machine"
    ]


def page(report: dict, source: str) -> str:
    """The results page (Markdown) of one run's JSON."""
    lines = [
        "# Filtered search",
        "",
        f"Generated by `python bench/filtered_search.py --page docs/results-filtered-search.md "
        f"--from {source}`; do not edit by hand. What runs and how is in the bench's docstring.",
        "",
        f"## {report['date']}",
        "",
        f"- machine: {report['machine']}, shared with other jobs while it ran (so the absolute "
        "latencies are noisy; the conditions are interleaved query by query, so that the ratios "
        "to unfiltered compare like with like)",
        f"- command: `{report['command']}`",
        f"- queries: {report['queries']} words-mode queries ({report['query_words']} words on "
        "average), top 10; conditions on an integer field `bucket` uniform in 0..99",
        "- hits scored from: *store* re-scores 4x the page from the float32 rows (the service's "
        "default, `exact_scores`); *engine* from the engine's own rows",
        *qdrant_note(report),
        "",
        "| engine | images | scored from | condition | passing | p50 / p99 ms | p50 x unfiltered "
        "| recall@10 | first mask ms | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        base = r["results"]["none"]["p50_ms"]
        for name, m in r["results"].items():
            mask = "-" if m["first_mask_ms"] is None else f"{m['first_mask_ms']:.1f}"
            build = "-" if r["build_s"] is None else f"{r['build_s']:.0f}"
            lines.append(
                f"| {engine_name(r)} | {r['images']:,} | {r['scoring']} | {name} | "
                f"{r['passing'][name]:.1%} | {m['p50_ms']:.1f} / {m['p99_ms']:.1f} | "
                f"{m['p50_ms'] / base:.2f} | {m['recall@10']:.4f} | {mask} | {build} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", help="the 1M compact index directory (opened read-only)")
    ap.add_argument("--corpus", default="/tmp/lexvla-bench", help="where the 1M corpus is cached")
    ap.add_argument("--small", type=int, default=100_000, help="images of the smaller indexes")
    ap.add_argument("--work", default="/tmp/filtered-bench", help="the smaller indexes go here")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also the 1M compact index (--index)")  # fmt: skip
    ap.add_argument("--full-qdrant", action=argparse.BooleanOptionalAction, default=True,
                    help="also Qdrant Edge of the 1M images (built once into --work)")  # fmt: skip
    ap.add_argument("--full-datatype", default="float16", choices=["float32", "float16"],
                    help="Qdrant's values at 1M (float16: half the disk of float32)")  # fmt: skip
    ap.add_argument("--prepare", action="store_true",
                    help="only build the cached 1M Qdrant index (--work), then exit")  # fmt: skip
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--page", type=Path, help="write the results page from --from")
    ap.add_argument("--from", dest="source", help="--page: a run's JSON (--out)")
    args = ap.parse_args(argv)
    if args.page:
        if not args.source:
            ap.error("--page needs --from RESULTS.json")
        report = json.loads((ROOT / args.source).read_text())
        args.page.write_text(page(report, args.source))
        return 0
    if args.prepare:
        prepare(args)
        return 0
    if not args.index:
        ap.error("--index (the 1M compact index) is needed to run")
    report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
