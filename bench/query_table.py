"""Table-mode query encoding per second on one CPU core (``model.query_table``), and its results page.

    python bench/query_table.py --out bench-results/query-table.json
    python bench/query_table.py --page docs/results-query-table.md \\
        --from docs/results/query-table.json --demo-metrics docs/results/demo-metrics.json \\
        --serve-results docs/results/serve-table-words.json

The process is pinned to one core and every library is told to use one thread (the tokenizer's
Rust pool included), so the figures are per core: a server's throughput is about this times its
cores. The tokenizer is Llama 2's (``../shared/data/llama2-tokenizer``, loaded as the service
loads it) and the vocabulary its 17,234 words; the table is random with ``--top-k`` words a token
for every one of the 32,000 tokens (heavy-tailed values: a few strong words a row, many weak), so
each query sums ~``tokens x top-k`` entries, as a trained table of that width does; the timings
depend on the entry counts, and on the values only through how many pass the threshold. Queries
are the Flickr8k sample's captions. Measured: batches of ``--batch`` captions (the throughput
figure), one caption a call (the service's uncached path, on its event loop), and the
tokenizer alone. ``--page`` writes the Markdown page from the JSON (and the demo's
``query_modes``, when given).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread everywhere, set before numpy and tokenizers start pools
    for _name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "RAYON_NUM_THREADS",
    ):
        os.environ[_name] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import csv
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pin_one_core() -> int | None:
    """Run on one core (the first this process may use); its number, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def random_rows(tokens: int, words: int, top_k: int, seed: int) -> sp.csr_matrix:
    """``top_k`` random words a token, heavy-tailed like a trained row's: a few strong, many
    weak."""
    rng = np.random.default_rng(seed)
    cols = np.sort(np.stack([rng.choice(words, top_k, replace=False) for _ in range(tokens)]))
    values = (rng.pareto(1.5, size=cols.shape) + 0.01).astype(np.float32)
    indptr = np.arange(0, tokens * top_k + 1, top_k)
    return sp.csr_matrix((values.ravel(), cols.ravel(), indptr), shape=(tokens, words))


def build_table(tokenizer_dir: Path, top_k: int, seed: int) -> Any:
    from model.backbones import load_tokenizer
    from model.config import load_preset
    from model.query_table import QueryTable
    from model.vocabulary import Vocabulary

    config = load_preset("lexvla-7b")
    tokenizer = load_tokenizer(config.text.model_copy(update={"tokenizer": str(tokenizer_dir)}))
    vocabulary = Vocabulary.from_tokenizer(tokenizer, config.vocabulary_rule)
    rows = random_rows(len(tokenizer), len(vocabulary), top_k, seed)
    s = config.sparsity
    return QueryTable(rows, tokenizer, vocabulary, s.threshold, s.top_k, {"teacher": "random"})


def add_random_table(checkpoint: Path, top_k: int = 64, seed: int = 0) -> None:
    """Give a checkpoint folder a random query table, unless it has one (``bench/serve.py``'s
    table scenario: its timings depend on the table's entry counts, not on what it learned)."""
    from model import LexVLA
    from model.query_table import FILE, QueryTable

    if (checkpoint / FILE).is_file():
        return
    model = LexVLA.from_pretrained(checkpoint)
    top_k = min(top_k, len(model.vocabulary))
    rows = random_rows(len(model.tokenizer), len(model.vocabulary), top_k, seed)
    QueryTable.for_model(rows, model, {"teacher": "random"}).save(checkpoint)


def captions(limit: int) -> list[str]:
    with (SHARED / "flickr8k-sample" / "captions.csv").open() as f:
        return [row["caption"] for row in csv.DictReader(f)][:limit]


def rate(fn: Any, items: int, repeats: int) -> dict[str, int]:
    """Items per second from the median call and from the fastest one (on a shared machine the
    median includes other programs' turns on the core; the fastest is the least disturbed)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": round(items / statistics.median(times)), "best": round(items / min(times))}


def measure_one(args: argparse.Namespace, top_k: int) -> dict[str, Any]:
    """Every figure for a table of ``top_k`` words a token."""
    from model.query_table import query_token_ids

    table = build_table(args.tokenizer, top_k, args.seed)
    texts = captions(args.batch)
    batch_rate = rate(lambda: table.encode(texts), len(texts), args.repeats)
    token_rate = rate(lambda: query_token_ids(table.tokenizer, texts), len(texts), args.repeats)
    singles = texts[: args.singles]
    one_rate = rate(lambda: [table.encode_row(t) for t in singles], len(singles), args.repeats)
    rows = table.encode(texts)
    with tempfile.TemporaryDirectory() as tmp:
        size = table.save(tmp).stat().st_size
    tokens = [len(i) for i in query_token_ids(table.tokenizer, texts)]
    return {
        "table": {
            "tokens": table.rows.shape[0],
            "vocabulary": table.rows.shape[1],
            "top_k_per_token": top_k,
            "entries": int(table.rows.nnz),
            "file_mib": round(size / 2**20, 1),
        },
        "queries": {
            "captions": len(texts),
            "mean_tokens_with_bos": round(float(np.mean(tokens)), 1),
            "mean_active_words": round(float(np.diff(rows.indptr).mean()), 1),
        },
        "queries_per_s_per_core_batched": batch_rate,
        "queries_per_s_per_core_one_at_a_time": one_rate,
        "one_query_us": {k: round(1e6 / v, 1) for k, v in one_rate.items()},
        "tokenizer_only_queries_per_s": token_rate,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    core = pin_one_core()
    import scipy

    return {
        "machine": {
            "cpu": cpu_name(),
            "pinned_core": core,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "command": "python bench/query_table.py " + shlex.join(sys.argv[1:]),
        "batch": args.batch,
        "target_queries_per_s_per_core": 20_000,
        "runs": [measure_one(args, k) for k in args.top_k],
    } | {"load_average_1min_after": round(os.getloadavg()[0], 2)}


def serve_section(serve: dict[str, Any]) -> list[str]:
    """The service's table and words scenarios of one ``bench/serve.py`` run, in run order."""
    lines = [
        "",
        "## The service, table mode beside words mode (`bench/serve.py`)",
        "",
        f"{serve['date']}, {serve['machine']} (shared), one worker, {serve['images']:,} synthetic "
        f"images ({serve['active_per_image']} active words each) in a {serve['engine']} index, "
        "the tiny model on Llama 2's tokenizer (17,234 words) with a random table of 64 words a",
        "token; every query distinct (no cache), 8 concurrent Python clients on the same cores.",
        "Command: `python bench/serve.py --images 20000 --llama2 --scenarios "
        "words,table,words,table --requests 2000 --max-seconds 20`.",
        "",
        "| scenario | req/s | p50 (ms) | p99 (ms) | server: encode / search / rescore (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in serve["results"]:
        ms = r["server_ms"]
        lines.append(
            f"| {r['scenario']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{ms['encode_ms']} / {ms['search_ms']} / {ms['rescore_ms']} |"
        )
    lines += [
        "",
        "A table query has far more active words than a words-mode one (each token adds up to",
        "64), so its search and re-scoring cost more as well as its encoding.",
    ]
    return lines


def page(
    result: dict[str, Any],
    demo: dict[str, Any] | None,
    source: str,
    serve: dict[str, Any] | None = None,
) -> str:
    """The results page (Markdown) of one run's JSON, and the demo's query modes and a
    ``bench/serve.py`` run's table and words scenarios if given."""
    m, first = result["machine"], result["runs"][0]
    lines = [
        "# Query table: encoding speed and retrieval quality",
        "",
        "Generated by `bench/query_table.py --page` from `" + source + "`; do not edit by hand.",
        "What the table is and how it is trained: `model/query_table.py`,",
        "`training/query_table.py`.",
        "",
        "## Encoding speed, one CPU core",
        "",
        f"- machine: {m['cpu']} (a shared 2-core VM), pinned to core {m['pinned_core']}; "
        f"Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- tables: random, {first['table']['tokens']:,} tokens (Llama 2's) x "
        f"{first['table']['vocabulary']:,} words, heavy-tailed values",
        f"- queries: {first['queries']['captions']} Flickr8k captions, "
        f"{first['queries']['mean_tokens_with_bos']} tokens each with BOS",
        f"- target: >= {result['target_queries_per_s_per_core']:,} queries/s per core",
        "",
        f"| words a token | entries | file (MiB) | active words a query | queries/s, batches of "
        f"{result['batch']} | queries/s, one a call | one query (us) | tokenizer alone, "
        "queries/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        t, q = run["table"], run["queries"]
        batched, one = run["queries_per_s_per_core_batched"], run["one_query_us"]
        tokens = run["tokenizer_only_queries_per_s"]
        lines.append(
            f"| {t['top_k_per_token']} | {t['entries']:,} | {t['file_mib']} | "
            f"{q['mean_active_words']} | {batched['best']:,} ({batched['median']:,}) | "
            f"{run['queries_per_s_per_core_one_at_a_time']['best']:,} | {one['best']} "
            f"({one['median']}) | {tokens['best']:,} |"
        )
    lines += [
        "",
        "Each figure is from the fastest of the repeated calls, the median call's in brackets:",
        f"the machine is shared (1-minute load average {result['load_average_1min_before']} "
        f"before, {result['load_average_1min_after']} after, on 2 cores), and the median",
        "includes other programs' turns on the core. \"One a call\" is the service's path for a",
        "query it has not cached (on its event loop, like words mode); a batch is bulk encoding.",
    ]
    if serve is not None:
        lines += serve_section(serve)
    if demo is not None:
        modes = demo["query_modes"]
        model_r1 = modes["model"]["t2i_r1"]
        lines += [
            "",
            "## Retrieval quality on the demo (`lexvla demo`, tiny model on shapes)",
            "",
            "Text-to-image R@1 (%) on the demo's 300 held-out images and their captions, at the",
            "checkpoint's threshold (`lexvla/demo_eval.py`, `query_modes` in its `metrics.json`;",
            "same machine and date; `lexvla demo --no-serve`):",
            "",
            "| query mode | t2i R@1 | vs model |",
            "|---|---|---|",
        ]
        for mode, score in modes.items():
            share = 100 * score["t2i_r1"] / model_r1 if model_r1 else float("nan")
            lines.append(f"| {mode} | {score['t2i_r1']:.1f} | {share:.0f}% |")
    lines += [
        "",
        "## Default mode",
        "",
        "A request that names no mode still gets `model`, with or without a GPU: the table is",
        "a client's choice. On the demo the table matches the model's R@1, but the demo's",
        "captions are a small closed language; nothing has measured the table against Llama 2",
        "on real captions, so it does not replace the text encoder by default.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.add_argument("--tokenizer", type=Path, default=SHARED / "llama2-tokenizer")
    p.add_argument(
        "--top-k", type=int, nargs="+", default=[32, 64, 128], help="words a token, one run each"
    )
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--singles", type=int, default=500, help="captions encoded one a call")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page", type=Path, help="write the results page (Markdown) here")
    p.add_argument("--from", dest="source", type=Path, help="--page: the JSON of a run")
    p.add_argument("--demo-metrics", type=Path, help="--page: a demo's metrics.json")
    p.add_argument("--serve-results", type=Path, help="--page: a bench/serve.py JSON")
    args = p.parse_args(argv)
    if args.page is not None:
        if args.source is None:
            p.error("--page needs --from RESULT.json")
        result = json.loads(args.source.read_text())
        demo = json.loads(args.demo_metrics.read_text()) if args.demo_metrics else None
        serve = json.loads(args.serve_results.read_text()) if args.serve_results else None
        args.page.write_text(page(result, demo, str(args.source), serve))
        return 0
    if not (args.tokenizer / "tokenizer.model").is_file():
        p.error(f"no Llama 2 tokenizer at {args.tokenizer} (pass --tokenizer DIR)")
    result = measure(args)
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
