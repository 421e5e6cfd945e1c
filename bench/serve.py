"""Throughput and latency of the search service under concurrent load, over loopback HTTP.

    python bench/serve.py                                   # 100k images, both modes, ~2 min
    python bench/serve.py --images 20000 --requests 200 --out runs/bench-serve.json
    python bench/serve.py --images 1000000 --active 1000 --llama2 --client wrk \
        --scenarios words,overload --workers 1,2 --workdir /tmp/lexvla-bench  # 1M, LexVLA density
    python bench/serve.py --page docs/results-serving.md --from docs/results/serving.json

What runs. A tiny random LexVLA checkpoint (or ``--checkpoint``) and an index (``--engine``) of
``--images`` synthetic image vectors over the model's vocabulary (bench/index_synthetic.py:
Zipf word popularity, topic words carrying most of the weight, ``--active`` words per image).
The service runs as its own process (``python -m service`` under uvicorn on 127.0.0.1); this
process is the load generator: ``--concurrency`` clients each send their next request as soon as
the previous one is answered, ``--requests`` in all or for at most ``--max-seconds``. Every query
text is distinct (random captions from the tiny preset's word list), so the query cache never
answers; the micro-batcher does combine concurrent model-mode queries.

Scenarios: ``model`` (LLM text encoder, micro-batched), ``words`` (the query's own words, no
LLM), ``table`` (the query table, no LLM; a checkpoint without one gets a random table of 64
words a token, ``bench/query_table.py``), and ``overload`` (model mode at 4x the concurrency against a server that admits
``--concurrency``: the extra requests must be refused with 429 at once, not queued; with
``--client wrk``, wrk's 4x connections fill the admission slots, backing off 50 ms after a 429,
and a probe sends the extra requests).

Reported per scenario: requests/s, client-side latency p50/p90/p99 (ms), 429s and errors, and
the means of the server's own stage timings (encode, search, rescore) from the responses.
Client and server share the machine's cores, so on a small machine the numbers are a floor;
``--client wrk`` (apt's ``wrk``) costs far less CPU per request than the Python client, and under
overload a light probe beside wrk's flood times the 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_synthetic import VOCAB, cached_corpus, make_corpus  # noqa: E402
from bench.live import free_port  # noqa: E402
from bench.query_table import add_random_table  # noqa: E402
from bench.serve_load import captions, row_text, run_load, run_wrk  # noqa: E402

LLAMA2_TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer"


def build_inputs(
    work: Path, checkpoint: str | None, images: int, active: int, engine: str, llama2: bool
) -> tuple[Path, Path, Path]:
    """A checkpoint, a corpus store of synthetic vectors and a published index, under ``work``
    (reused by the next run with the same arguments: a 1M store takes minutes to write).

    The checkpoint is the tiny preset, on the real Llama 2 tokenizer with ``llama2`` (so the
    vocabulary has LexVLA's 17,234 words and the corpus its density, ~1,000 words per image).
    """
    from indexer.build import build_index
    from indexer.decode import ImageInfo
    from indexer.store import CorpusStore
    from model import LexVLA
    from model.tiny import create_tiny_checkpoint

    ckpt = Path(checkpoint) if checkpoint else work / ("tiny-llama2" if llama2 else "tiny")
    if not (ckpt / "checkpoint.json").is_file():
        overrides = {"tiny.tokenizer": str(LLAMA2_TOKENIZER)} if llama2 else None
        create_tiny_checkpoint(ckpt, overrides=overrides)
    model = LexVLA.from_pretrained(ckpt)
    vocab = len(model.vocabulary)
    start = time.perf_counter()
    store_dir = work / f"store-{images}-{vocab}-{active}"
    if not (store_dir / "complete").is_file():
        if vocab == VOCAB and active >= 1000:
            corpus = cached_corpus(work, images)  # LexVLA statistics, memory-mapped
        else:
            corpus = make_corpus(images, vocab=vocab, active=min(active, vocab // 2), seed=0)
        shutil.rmtree(store_dir, ignore_errors=True)
        store = CorpusStore.create(store_dir, model.vocabulary, model.checkpoint_id, 0.0)
        for first in range(0, images, 1024):
            ids = [f"img-{i:07d}" for i in range(first, min(images, first + 1024))]
            records = [ImageInfo(i, "", 0, "synthetic", 0, 0, "") for i in ids]
            store.append_shard(ids, corpus.rows[first : first + len(ids)], records)
        store.close()
        (store_dir / "complete").write_text("ok\n")
    index_dir = work / f"index-{images}-{vocab}-{active}-{engine}"
    if not (index_dir / "CURRENT").is_file():
        with CorpusStore.open(store_dir) as store:
            build_index(store, index_dir, engine)
    print(f"store and {engine} index: {images:,} synthetic images x {vocab} words, ready in "
          f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    return ckpt, store_dir, index_dir


def start_server(
    ckpt: Path,
    store: Path,
    index: Path,
    port: int,
    max_concurrency: int,
    workers: int,
    log: Path,
    exact_scores: bool = True,
):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LEXVLA_MAX_CONCURRENCY": str(max_concurrency),
        "LEXVLA_EXACT_SCORES": str(exact_scores).lower(),
    }
    command = [
        sys.executable, "-m", "service", "--checkpoint", str(ckpt), "--index", str(index),
        "--store", str(store), "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server not ready in 120 s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--active", type=int, default=100, help="active words per synthetic image")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: a fresh tiny one)")
    ap.add_argument(
        "--llama2",
        action="store_true",
        help="tiny model on the real Llama 2 tokenizer (17,234 words; ../shared)",
    )
    ap.add_argument("--engine", default="compact", help="index engine (memory, compact, ...)")
    ap.add_argument("--workers", default="1", help="server processes, e.g. 1,2 for both")
    ap.add_argument("--scenarios", default="model,words,overload")
    ap.add_argument("--workdir", help="keep checkpoint, store and index here for the next run")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="per scenario (upper bound)")
    ap.add_argument("--max-seconds", type=float, default=45.0, help="per scenario (upper bound)")
    ap.add_argument(
        "--client",
        choices=["python", "wrk"],
        default="python",
        help="load generator (wrk: needs wrk on PATH; under overload wrk floods while a light "
        "probe times the 429s)",
    )
    ap.add_argument(
        "--no-exact-scores",
        action="store_true",
        help="serve with LEXVLA_EXACT_SCORES=false (hits scored from the engine's rows)",
    )
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--page", type=Path, help="write the results page (Markdown) here, from --from")
    ap.add_argument(
        "--from", dest="sources", type=Path, action="append", help="--page: a run's JSON (--out)"
    )
    args = ap.parse_args(argv)
    if args.page is not None:
        if not args.sources:
            ap.error("--page needs --from RESULTS.json (one or more)")
        runs = [(json.loads(path.read_text()), str(path)) for path in args.sources]
        args.page.write_text(page(runs))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, store, index = build_inputs(
            work, args.checkpoint, args.images, args.active, args.engine, args.llama2
        )
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        texts = captions(8 * args.requests, seed=0)
        modes = {"model": "model", "words": "words", "table": "table", "overload": "model"}
        if "table" in args.scenarios.split(","):
            add_random_table(ckpt)
        results = []
        n = 0
        for workers in [int(w) for w in args.workers.split(",")]:
            process = start_server(
                ckpt, store, index, port, args.concurrency, workers, work / "server.log",
                exact_scores=not args.no_exact_scores,
            )  # fmt: skip
            try:
                for scenario in args.scenarios.split(","):
                    concurrency = args.concurrency * (4 if scenario == "overload" else 1)
                    if scenario == "overload" and args.client == "wrk":
                        # 4x every worker's admission slots; a refused wrk connection backs off
                        # BACKOFF_MS (serve_wrk.lua) instead of re-sending at once, so the slots
                        # stay full with fewer instant re-sends, and the probe overflows them
                        concurrency = 4 * args.concurrency * workers
                    # warm-up (not measured): the first batches pay one-off costs
                    warm = captions(4 * concurrency, seed=1000 + n)
                    asyncio.run(run_load(url, "warm-up", modes[scenario], warm, concurrency, 10))
                    batch = texts[n * args.requests : (n + 1) * args.requests]
                    n += 1
                    if args.client == "wrk":
                        many = captions(int(args.max_seconds * 1500), seed=2000 + n)
                        result = run_wrk(
                            url, scenario, modes[scenario], many, concurrency, args.max_seconds,
                            probe=scenario == "overload", server=(process.pid, workers),
                        )  # fmt: skip
                    else:
                        result = asyncio.run(run_load(
                            url, scenario, modes[scenario], batch, concurrency, args.max_seconds
                        ))  # fmt: skip
                    result.workers = workers
                    results.append(result)
                    print(row_text(result), flush=True)
                    if result.error_kinds:
                        print(f"  errors: {result.error_kinds}", flush=True)
            finally:
                stop_server(process)

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": " ".join(["python", "bench/serve.py", *(argv or sys.argv[1:])]),
        "images": args.images,
        "engine": args.engine,
        "active_per_image": args.active,
        "exact_scores": not args.no_exact_scores,
        "results": [asdict(r) for r in results],
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def emit(report: dict, out: str | None) -> int:
    """Print a benchmark's JSON report and write it to ``out`` (a path, or None); exit code 0."""
    text = json.dumps(report, indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
    return 0


def machine() -> str:
    """The processor's model name and the cores this process may use (Linux's /proc)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def page(runs: list[tuple[dict, str]]) -> str:
    """The service results page (Markdown) from runs' JSON (each with the file it came from):
    per run, a row per scenario and workers, with the rate against one worker's in that run."""
    sources = " ".join(f"--from {source}" for _, source in runs)
    lines = [
        "# The service under load",
        "",
        f"Generated by `python bench/serve.py --page docs/results-serving.md {sources}`; do not",
        "edit by hand. Load generator and server share the machine's cores, so the rates are a",
        "floor. How wrk's few kept-alive connections fall on the workers (the kernel hashes each",
        "new connection to one worker's socket) bounds what several workers can serve.",
    ]
    for report, _ in runs:
        rows = report["results"]
        one = {r["scenario"]: r["rps"] for r in rows if r["workers"] == 1}
        scoring = "the corpus store's float rows" if report["exact_scores"] else "the engine's rows"
        lines += [
            "",
            f"## {report['date']}: {', '.join(dict.fromkeys(r['scenario'] for r in rows))}",
            "",
            f"- machine: {report['machine']}",
            f"- command: `{report['command']}`",
            f"- index: {report['images']:,} images, {report['engine']} engine, "
            f"{report['active_per_image']} active words per image; hits scored from {scoring}",
            "",
            "| scenario | workers | req/s | x one worker | p50 / p90 / p99 ms | wrk's connections "
            "per worker | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            base = one.get(r["scenario"])
            ratio = f"{r['rps'] / base:.2f}" if base else "-"
            split = "/".join(map(str, r["connections"])) or "-"
            lines.append(
                f"| {r['scenario']} | {r['workers']} | {r['rps']:.0f} | {ratio} | "
                f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} / {r['p99_ms']:.1f} | {split} | "
                f"{r['errors']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
