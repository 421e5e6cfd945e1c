"""``lexvla model ...`` and ``lexvla encode ...``: inspect presets, make checkpoints, encode.

lexvla model params --preset lexvla-7b           parameter counts (meta device, no weights)
lexvla model init --preset tiny --out ckpt/      a random tiny checkpoint (tests, demos)
lexvla model push ckpt/ org/name [--dry-run]     upload to the Hugging Face Hub with a model card
lexvla encode text "a dog" --checkpoint ckpt/    top words of a query
lexvla encode image a.jpg b.png --checkpoint ckpt/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def _params(args: argparse.Namespace) -> int:
    from .config import LexVLAConfig, load_preset
    from .params import count_parameters

    config = LexVLAConfig.load(args.config) if args.config else load_preset(args.preset)
    if config.vocab_size is None and config.tiny is not None:
        from .tiny import with_tiny_vocabulary

        config = with_tiny_vocabulary(config)
    parts = count_parameters(config)
    if args.json:
        print(json.dumps(parts, indent=2))
        return 0
    print(f"{config.name}: vocabulary {config.vocab_size} words")
    for name, part in parts.items():
        n = int(part["params"])
        flag = (
            ""
            if name in ("trainable", "frozen", "total")
            else ("trainable" if part["trainable"] else "frozen")
        )
        print(f"  {name:30s} {n:>15,d}  {n / 1e6:10.2f}M  {flag}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from .tiny import create_tiny_checkpoint

    if args.preset != "tiny":
        raise SystemExit(
            "only the tiny preset can be initialised without weights; for lexvla-7b, train "
            "(`lexvla train`) from the base models"
        )
    path = create_tiny_checkpoint(args.out, seed=args.seed)
    print(f"wrote a random tiny checkpoint to {path}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from .checkpoint import CheckpointError
    from .hub import plan_push, push_to_hub

    try:
        if args.dry_run:
            files = plan_push(args.checkpoint, args.repo_id, args.include_training_state)
            for name, data in files.items():
                size = len(data) if isinstance(data, bytes) else data.stat().st_size
                print(f"{size:>12,d}  {name}")
            card = files["README.md"]
            print("\n" + (card.decode() if isinstance(card, bytes) else card.read_text()))
            return 0
        url = push_to_hub(
            args.checkpoint,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            commit_message=args.message,
            include_training_state=args.include_training_state,
        )
    except (CheckpointError, ValueError, OSError, HfHubHTTPError) as exc:
        raise SystemExit(f"lexvla model push: {' '.join(str(exc).split())}") from exc
    print(f"pushed {args.checkpoint} to {url}")
    return 0


def _load_images(paths: Sequence[str]) -> list:
    from PIL import Image, UnidentifiedImageError

    from .preprocessing import upright_rgb

    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(upright_rgb(im))
        except (OSError, UnidentifiedImageError) as exc:
            raise SystemExit(f"cannot read image {p}: {exc}") from exc
    return images


def _encode(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .lexvla import LexVLA

    try:
        model = LexVLA.from_pretrained(args.checkpoint, device=args.device)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if args.kind == "text":
        labels, dense = list(args.inputs), model.encode_texts(list(args.inputs))
    else:
        labels, dense = list(args.inputs), model.encode_pil(_load_images(args.inputs))
    rows = model.sparsify(dense)
    results = []
    for label, row in zip(labels, rows, strict=True):
        order = row.data.argsort()[::-1][: args.top]
        words = {
            model.vocabulary.words[row.indices[i]]: round(float(row.data[i]), 5) for i in order
        }
        results.append({"input": label, "active_words": int(row.nnz), "top_words": words})
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r['input']}  ({r['active_words']} active words)")
            for w, v in r["top_words"].items():
                print(f"  {v:8.4f}  {w}")
    return 0


def build_parser(prog: str = "lexvla") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameter counts by part (no weights allocated)")
    p.add_argument("--preset", default="lexvla-7b")
    p.add_argument("--config", help="a config JSON instead of a preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_params)
    p = sub.add_parser("init", help="write a random tiny checkpoint")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_init)
    p = sub.add_parser("push", help="upload a checkpoint to the Hugging Face Hub")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder")
    p.add_argument("repo_id", help="hub repository, org/name (created if missing)")
    p.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", default="Upload LexVLA checkpoint", help="commit message")
    p.add_argument(
        "--include-training-state", action="store_true", help="also upload training_state.pt"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the files and card, upload nothing"
    )
    p.set_defaults(func=_push)
    p = sub.add_parser("encode", help="top words of texts or images")
    p.add_argument("kind", choices=["text", "image"])
    p.add_argument("inputs", nargs="+", help="texts, or image paths")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or hub id org/name")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--top", type=int, default=20, help="words to print per input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_encode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from common.quiet import quiet_transformers

    quiet_transformers()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
