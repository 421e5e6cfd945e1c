"""``lexvla train`` and ``lexvla eval``.

    lexvla train --config run.json steps=5000 optim.lr_lora=1e-4     # train (or resume) a run
    lexvla train --config tiny-shapes output_dir=runs/tiny           # a built-in preset
    lexvla train --config run.json --resume                          # insist on resuming
    lexvla train --config run.json --print-config                    # resolved config, no run
    lexvla eval --checkpoint runs/tiny --data shapes:500             # latest checkpoint of a run
    lexvla eval --checkpoint ckpt/ --data ../shared/data/flickr8k-sample/captions.csv
    lexvla eval --checkpoint ckpt/ --data dataset_flickr30k.json --image-root flickr30k-images
    lexvla eval --checkpoint ckpt/ --patchdis coco:annotations/instances_val2017.json

Under torchrun every process runs the same command (see ``training/__main__.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config, parse_assignments

    try:
        overrides = parse_assignments(args.overrides)
        if args.resume is not None:
            overrides["resume"] = args.resume
        elif args.no_resume:
            overrides["resume"] = "never"
        config = load_config(args.config, overrides)
    except (ValueError, KeyError, FileNotFoundError, ValidationError) as exc:
        print(f"lexvla train: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_json())
        return 0
    from training.loop import train

    summary = train(config)
    from training import distributed

    if distributed.env_world()[0] == 0:
        last = summary.get("last", {})
        print(
            f"trained to step {summary['step']}: loss {last.get('loss', float('nan')):.4f}; "
            f"skipped {sum(summary['skipped'].values())} samples; checkpoints in "
            f"{Path(config.output_dir) / 'checkpoints'}"
        )
    return 0


def _resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, a hub id (``org/name``), or a run's output folder (its latest)."""
    from model.hub import is_hub_id, resolve_checkpoint
    from training.checkpoints import latest_checkpoint

    if is_hub_id(path):
        return resolve_checkpoint(path)
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise SystemExit(f"lexvla eval: {path} is neither a checkpoint nor a run with checkpoints")
    return latest


def _text_side(checkpoint: Path, requested: str | None) -> str:
    """The text side a run trained with (train_config.json beside the checkpoint), unless given."""
    if requested is not None:
        return requested
    saved = checkpoint / "train_config.json"
    if saved.is_file():
        return str(json.loads(saved.read_text()).get("data", {}).get("text_side", "llm"))
    return "llm"


def _eval(args: argparse.Namespace) -> int:
    import torch

    from model import CheckpointError, LexVLA
    from training.config import EvalSettings
    from training.evaluation import evaluate

    checkpoint = _resolve_checkpoint(args.checkpoint)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        settings = EvalSettings(
            data=args.data,
            patchdis=args.patchdis,
            image_root=args.image_root,
            split=args.split,
            top_k=args.top_k,
            batch_size=args.batch_size,
            max_images=args.max_images,
            seed=args.seed,
            background=args.background,
        )
        model = LexVLA.from_pretrained(checkpoint, device=device)
        result = evaluate(model, settings, _text_side(checkpoint, args.text_side), args.num_workers)
    except (CheckpointError, ValueError, FileNotFoundError, ValidationError) as exc:
        print(f"lexvla eval: {exc}", file=sys.stderr)
        return 2
    result = {"checkpoint": str(checkpoint), "checkpoint_id": model.checkpoint_id, **result}
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text if args.json else summarize(result))
    return 0


def summarize(result: dict[str, Any]) -> str:
    """A short human-readable table of an evaluation result."""
    lines = [f"checkpoint {result.get('checkpoint_id', '?')}"]
    retrieval = result.get("retrieval")
    if retrieval:
        lines.append(f"retrieval: {retrieval['images']} images, {retrieval['texts']} texts")
        lines.append(
            f"  {'setting':18s} {'I2T R@1/5/10':>20s} {'T2I R@1/5/10':>20s} {'words img/txt':>15s}"
        )
        for name, row in retrieval.items():
            if isinstance(row, dict):
                i2t = "/".join(f"{v:.1f}" for v in row["image_to_text"].values())
                t2i = "/".join(f"{v:.1f}" for v in row["text_to_image"].values())
                words = f"{row['active_words_image']:.0f}/{row['active_words_text']:.0f}"
                lines.append(f"  {name:18s} {i2t:>20s} {t2i:>20s} {words:>15s}")
    for name, pd in result.get("patchdis", {}).items():
        lines.append(
            f"PatchDis {name}: mIoU {pd['miou']:.3f} over {pd['classes_present']} classes "
            f"(uniform chance {pd['chance_miou_uniform']:.3f})"
        )
    usage = result.get("vocabulary")
    if usage:
        top = ", ".join(w["word"] for w in usage["most_frequent_image_words"][:8])
        lines.append(
            f"vocabulary: {usage['active_words_image']:.1f} words/image, "
            f"{usage['active_words_text']:.1f} words/text, false activations "
            f"{100 * usage['image_false_activation_share']:.1f}% (images); frequent: {top}"
        )
    if result.get("skipped"):
        lines.append(f"skipped: {result['skipped']}")
    return "\n".join(lines)


def build_parser(prog: str = "lexvla") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train LexVLA (single process or under torchrun)")
    p.add_argument("--config", help="a training config JSON file or a preset name (tiny-shapes)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="resume the latest checkpoint of output_dir (error if none), or the one given",
    )
    p.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="retrieval recall, PatchDis and vocabulary usage")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    p.add_argument("--data", help="retrieval set: shapes:N, a .csv/.jsonl manifest, Karpathy .json")
    p.add_argument("--patchdis", help="a separate PatchDis set: shapes:N or coco:ANNOTATIONS.json")
    p.add_argument("--image-root", help="folder that image paths are relative to")
    p.add_argument("--split", default="test", help="Karpathy JSON split (default test)")
    p.add_argument("--top-k", type=int, nargs="*", default=[512, 256, 128, 64, 32, 16])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-images", type=int)
    p.add_argument("--seed", type=int, default=0, help="held-out synthetic shapes seed")
    p.add_argument("--background", choices=["ignore", "class"], default="ignore")
    p.add_argument("--text-side", choices=["llm", "bow"], help="default: what the run trained")
    p.add_argument("--device")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from common.quiet import quiet_transformers

    quiet_transformers()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
