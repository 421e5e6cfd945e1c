"""``lexvla index ...`` / ``python -m indexer ...``: thin commands over the indexer's functions.

lexvla index build --source photos/ --store corpus/ --checkpoint ckpt/ --index index/
lexvla index reindex --store corpus/ --index index-lucene/ --engine lucene
lexvla index delete --store corpus/ --index index/ ID [ID ...]
lexvla index export-jsonl --store corpus/ --out vectors.jsonl [--keys index --scale 100]
lexvla index info corpus/   (or an index directory)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from indexer.engines import ENGINES, open_index, publish
from indexer.engines.versions import resolve
from indexer.export import export_store_jsonl
from indexer.runner import IndexJob, build_index, run_index_job
from indexer.store import CorpusStore


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lexvla index", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="encode new images of a source into a store (resumable)")
    b.add_argument("--source", required=True, help="folder, .csv/.jsonl manifest or .tar shards")
    b.add_argument("--store", required=True, help="corpus store directory")
    b.add_argument("--checkpoint", required=True, help="LexVLA checkpoint directory")
    b.add_argument("--index", help="also publish a search index here")
    b.add_argument("--engine", choices=ENGINES, default="memory")
    b.add_argument("--device", default="cpu")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--chunk-size", type=int, default=1024)
    b.add_argument("--limit", type=int)
    b.add_argument("--no-thumbnails", action="store_true")
    b.add_argument("--skip-duplicate-content", action="store_true")
    b.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("reindex", help="build a new index version from a store (no encoding)")
    r.add_argument("--store", required=True)
    r.add_argument("--index", required=True)
    r.add_argument("--engine", choices=ENGINES, default="memory")
    d = sub.add_parser("delete", help="delete images from a store (and its index)")
    d.add_argument("--store", required=True)
    d.add_argument("--index")
    d.add_argument("ids", nargs="+")
    e = sub.add_parser("export-jsonl", help='write {"id", "vector": {word: weight}} lines')
    e.add_argument("--store", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--keys", choices=["word", "index"], default="word")
    e.add_argument("--scale", type=float, help="write integer impacts round(w * scale)")
    i = sub.add_parser("info", help="print the manifest of a store or an index")
    i.add_argument("path")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        job = IndexJob(
            source=args.source, store=args.store, checkpoint=args.checkpoint, index=args.index,
            engine=args.engine, device=args.device, batch_size=args.batch_size,
            chunk_size=args.chunk_size, limit=args.limit, thumbnails=not args.no_thumbnails,
            skip_duplicate_content=args.skip_duplicate_content, progress=not args.no_progress,
        )  # fmt: skip
        print(json.dumps(asdict(run_index_job(job)), indent=1))
    elif args.command == "reindex":
        with CorpusStore.open(args.store) as store:
            print(f"published {build_index(store, args.index, args.engine)}")
    elif args.command == "delete":
        with CorpusStore.open(args.store) as store:
            print(f"store: {store.delete(args.ids)} deleted")
        if args.index:
            index = open_index(args.index)
            print(
                f"index: {index.delete(args.ids)} deleted; published {publish(index, args.index)}"
            )
    elif args.command == "export-jsonl":
        lines = export_store_jsonl(args.store, args.out, args.keys, args.scale)
        print(f"wrote {lines} lines to {args.out}")
    elif args.command == "info":
        path = Path(args.path)
        manifest = path / "manifest.json"
        target = manifest if manifest.is_file() else resolve(path) / "index.json"
        if not target.is_file():
            print(f"{path} is neither a corpus store nor an index", file=sys.stderr)
            return 2
        print(target.read_text())
    return 0
