"""Live writes: uploads per second while searches run, search latency during writes against
without, and an index after many single-image adds against a fresh build of the same images.

    python bench/writes.py --out docs/results/live-writes.json         # ~5 min on 2 cores
    python bench/writes.py --page docs/results-live-writes.md --from docs/results/live-writes.json

What runs. A tiny random LexVLA checkpoint; ``--images`` generated photos (shapes on coloured
backgrounds) indexed by the indexer's own job into a compact index; ``lexvla serve --workers``
over it with an admin key. This process is the client (it shares the machine's cores with the
server, so rates are a floor):

1. ``search``: ``--concurrency`` clients send words-mode searches for ``--seconds``;
2. ``search + uploads``: the same, while one more client uploads new photos one at a time
   (``POST /images``, each answered once stored and published);
3. ``after adds``: the index the uploads left (``--adds`` single-image versions on top of the
   batch build, merged as each version is saved) against a fresh build of the same store
   (``lexvla index reindex``): files, blocks and in-process search p50 over the same queries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import emit, machine, start_server, stop_server  # noqa: E402
from bench.serve_load import captions  # noqa: E402

ADMIN = "bench-admin-key"


def photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` small PNGs: a shape of one colour on a background that differs per photo."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        image = Image.new("RGB", (96, 96), (i * 37 % 256, i * 91 % 256, i * 53 % 256))
        draw = ImageDraw.Draw(image)
        colour = ((i * 7) % 256, 255 - (i * 11) % 256, (i * 13) % 256)
        box = (16 + i % 20, 16 + i % 17, 72 + i % 9, 70 + i % 13)
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colour)
        path = folder / f"p{i:06d}.png"
        image.save(path)
        paths.append(path)
    return paths


async def load(url: str, texts: list[str], clients: int, seconds: float, uploads: list[Path]):
    latencies: list[float] = []
    errors: dict[str, int] = {}
    uploaded = 0
    deadline = time.perf_counter() + seconds
    headers = {"X-API-Key": ADMIN}

    async def searcher(http: httpx.AsyncClient, n: int) -> None:
        i = n
        while time.perf_counter() < deadline:
            body = {"query": texts[i % len(texts)], "mode": "words", "query_words_limit": 10}
            i += clients
            t0 = time.perf_counter()
            r = await http.post("/search", json=body, headers=headers)
            if r.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1e3)
            else:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

    async def uploader(http: httpx.AsyncClient) -> None:
        nonlocal uploaded
        for path in uploads:
            if time.perf_counter() >= deadline:
                return
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            r = await http.post("/images", files=files, data={"id": f"live/{path.name}"},
                                headers=headers)  # fmt: skip
            if r.status_code == 201:
                uploaded += 1
            else:
                errors[f"upload {r.status_code}"] = errors.get(f"upload {r.status_code}", 0) + 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        tasks = [searcher(http, n) for n in range(clients)]
        if uploads:
            tasks.append(uploader(http))
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    lat = np.array(latencies or [0.0])
    return {
        "searches": len(latencies), "search_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "uploads": uploaded, "uploads_per_s": round(uploaded / elapsed, 2), "errors": errors,
        "seconds": round(elapsed, 1),
    }  # fmt: skip


def index_report(index_dir: Path, queries, model) -> dict:
    """Files, blocks, images and in-process search p50 of an index directory's current version."""
    from indexer.engines import open_index
    from indexer.engines.versions import current_version
    from model import bag_of_words_row

    version = current_version(index_dir)
    files = [f for f in version.rglob("*") if f.is_file() and "fields" not in f.parts]
    index = open_index(index_dir)
    rows = [bag_of_words_row(q, model.tokenizer, model.vocabulary) for q in queries]
    for row in rows[:5]:
        index.search(row, 10)
    times = []
    for row in rows:
        t0 = time.perf_counter()
        index.search(row, 10)
        times.append((time.perf_counter() - t0) * 1e3)
    blocks = version / "blocks"
    return {
        "images": index.count(), "bytes": sum(f.stat().st_size for f in files),
        "blocks": len(list(blocks.iterdir())) if blocks.is_dir() else None,
        "search_p50_ms": round(float(np.median(times)), 3),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    from indexer.build import build_index
    from indexer.job import IndexJob
    from indexer.runner import run_index_job
    from indexer.store import CorpusStore
    from model import LexVLA
    from model.tiny import create_tiny_checkpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-writes-"))
    ckpt = create_tiny_checkpoint(work / "ckpt", seed=0)
    model = LexVLA.from_pretrained(ckpt)
    photos(work / "photos", args.images)
    job = IndexJob(source=str(work / "photos"), store=str(work / "store"), checkpoint=str(ckpt),
                   index=str(work / "index"), progress=False)  # fmt: skip
    run_index_job(job, model=model)
    new = photos(work / "new", args.adds, start=args.images)
    port = args.port
    os.environ["LEXVLA_API_KEY"] = ADMIN
    log = work / "server.log"
    server = start_server(ckpt, work / "store", work / "index", port, 64, args.workers, log)
    texts = captions(4000, seed=3)
    url = f"http://127.0.0.1:{port}"
    try:
        quiet = asyncio.run(load(url, texts, args.concurrency, args.seconds, []))
        busy = asyncio.run(load(url, texts, args.concurrency, args.seconds, new))
        rest = new[busy["uploads"] :]  # the adds the timed phase had no time for
        if rest:
            asyncio.run(load(url, texts, 0, 1e9, rest))
    finally:
        stop_server(server)
    with CorpusStore.open(work / "store") as store:
        build_index(store, work / "fresh")
    queries = captions(300, seed=11)
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "command": "python bench/writes.py " + " ".join(sys.argv[1:]),
        "images": args.images, "adds": args.adds, "workers": args.workers,
        "concurrency": args.concurrency,
        "search": quiet, "search_uploads": busy,
        "after_adds": index_report(work / "index", queries, model),
        "fresh_build": index_report(work / "fresh", queries, model),
    }  # fmt: skip


def page(runs: list[tuple[dict, str]]) -> str:
    sources = " ".join(f"--from {source}" for _, source in runs)
    lines = [
        "# Live writes",
        "",
        f"Generated by `python bench/writes.py --page docs/results-live-writes.md {sources}`;",
        "do not edit by hand. Client and server share the machine's cores, so rates are a floor.",
    ]
    for r, _ in runs:
        q, b, a, f = r["search"], r["search_uploads"], r["after_adds"], r["fresh_build"]
        lines += [
            "",
            f"## {r['date']}: {r['images']:,} photos, {r['workers']} workers, "
            f"{r['concurrency']} search clients",
            "",
            f"- machine: {r['machine']}",
            f"- command: `{r['command']}`",
            "",
            "| phase | searches/s | search p50 / p99 ms | uploads/s | errors |",
            "|---|---|---|---|---|",
            f"| search | {q['search_rps']:.1f} | {q['p50_ms']:.1f} / {q['p99_ms']:.1f} | - | "
            f"{sum(q['errors'].values())} |",
            f"| search + uploads | {b['search_rps']:.1f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} "
            f"| {b['uploads_per_s']:.2f} | {sum(b['errors'].values())} |",
            "",
            f"After {r['adds']:,} single-image adds (each its own version, small blocks merged as "
            "each version is saved) against a fresh build of the same store:",
            "",
            "| index | images | blocks | bytes (engine files) | search p50 ms (in process) |",
            "|---|---|---|---|---|",
            f"| after adds | {a['images']:,} | {a['blocks']} | {a['bytes']:,} | "
            f"{a['search_p50_ms']:.3f} |",
            f"| fresh build | {f['images']:,} | {f['blocks']} | {f['bytes']:,} | "
            f"{f['search_p50_ms']:.3f} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--adds", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--port", type=int, default=8791)
    p.add_argument("--workdir", help="keep the corpus and indexes here (default: a temp folder)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--page", help="write the results page (Markdown) from --from reports")
    p.add_argument("--from", dest="sources", action="append", default=[])
    args = p.parse_args(argv)
    if args.page:
        runs = [(json.loads(Path(s).read_text()), s) for s in args.sources]
        Path(args.page).write_text(page(runs))
        return 0
    return emit(run(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
