"""``lexvla index ...`` / ``python -m indexer ...``: thin commands over the indexer's functions.

lexvla index build --source photos/ --store corpus/ --checkpoint ckpt/ --index index/
lexvla index add --images new-photos/ --store corpus/ --checkpoint ckpt/ --index index/
lexvla index build --images photos/ --store parts/shard-0 --checkpoint ckpt/ --shard-id 0 --num-shards 3
lexvla index merge --out corpus/ parts/shard-0 parts/shard-1 parts/shard-2 [--index index/]
lexvla index reindex --store corpus/ --index index-lucene/ --engine lucene
lexvla index reindex --store corpus/ --index index-q/ --engine qdrant --qdrant-datatype float16
lexvla index build ... --engine qdrant --qdrant-url http://qdrant:6333 [--shard-id 0 --num-shards 3
    --qdrant-collection lexvla-2026-12]   then   lexvla index publish --index index-q/
    --qdrant-url http://qdrant:6333 --qdrant-collection lexvla-2026-12
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
from indexer.merge import MergeError, merge_stores
from indexer.runner import IndexJob, build_index, engine_options, run_index_job
from indexer.store import CorpusStore

QDRANT_FIELDS = tuple(name for name in IndexJob.model_fields if name.startswith("qdrant_"))


def _qdrant_flags(p: argparse.ArgumentParser) -> None:
    """--qdrant-* flags, one per ``IndexJob.qdrant_*`` field (same names, defaults, help)."""
    for name in QDRANT_FIELDS:
        field = IndexJob.model_fields[name]
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=field.default,
                help=field.description,
            )
            continue
        kind = {int: int, float: float}.get(type(field.default))
        if kind is None and "int" in str(field.annotation):
            kind = int
        p.add_argument(flag, type=kind or str, default=field.default, help=field.description)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lexvla index", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="encode new images of a source into a store (resumable)")
    a = sub.add_parser("add", help="index only the new images of a source into an existing store")
    for p in (b, a):
        p.add_argument(
            "--source",
            "--images",
            dest="source",
            required=True,
            help="folder, .csv/.jsonl manifest or .tar shards",
        )
        p.add_argument("--store", required=True, help="corpus store directory")
        p.add_argument("--checkpoint", required=True, help="LexVLA checkpoint directory")
        p.add_argument("--index", help="also publish a search index here")
        p.add_argument("--engine", choices=ENGINES, default="memory")
        p.add_argument("--device", default="cpu")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--chunk-size", type=int, default=1024)
        p.add_argument("--limit", type=int)
        p.add_argument("--shard-id", type=int, default=0, help="this process's slice (0-based)")
        p.add_argument("--num-shards", type=int, default=1, help="slices of the source in all")
        p.add_argument("--no-thumbnails", action="store_true")
        p.add_argument("--skip-duplicate-content", action="store_true")
        p.add_argument("--no-progress", action="store_true")
        _qdrant_flags(p)
    m = sub.add_parser("merge", help="merge part stores (sharded builds) into one, no encoding")
    m.add_argument("--out", required=True, help="merged store (created, or resumed)")
    m.add_argument("parts", nargs="+", help="part stores, in order")
    m.add_argument("--index", help="also publish a search index of the merged store here")
    m.add_argument("--engine", choices=ENGINES, default="memory")
    _qdrant_flags(m)
    r = sub.add_parser("reindex", help="build a new index version from a store (no encoding)")
    r.add_argument("--store", required=True)
    r.add_argument("--index", required=True)
    r.add_argument("--engine", choices=ENGINES, default="memory")
    _qdrant_flags(r)
    d = sub.add_parser("delete", help="delete images from a store (and its index)")
    d.add_argument("--store", required=True)
    d.add_argument("--index")
    d.add_argument("ids", nargs="+")
    _qdrant_flags(d)
    q = sub.add_parser("publish", help="publish a Qdrant collection of sharded jobs, swap alias")
    q.add_argument("--index", required=True, help="index directory that gets the new version")
    _qdrant_flags(q)
    e = sub.add_parser("export-jsonl", help='write {"id", "vector": {word: weight}} lines')
    e.add_argument("--store", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--keys", choices=["word", "index"], default="word")
    e.add_argument("--scale", type=float, help="write integer impacts round(w * scale)")
    i = sub.add_parser("info", help="print the manifest of a store or an index")
    i.add_argument("path")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (ConnectionError, ValueError) as exc:  # IndexUnavailable, bad options, mismatches
        print(f"lexvla index {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command in ("build", "add"):
        if not 0 <= args.shard_id < args.num_shards:
            parser.error(f"--shard-id must be in 0..{args.num_shards - 1} (--num-shards - 1)")
        if args.command == "add" and not (Path(args.store) / "manifest.json").is_file():
            print(
                f"no corpus store at {args.store}: `add` adds to an existing store; "
                "create it with `build`",
                file=sys.stderr,
            )
            return 2
        job = IndexJob(
            source=args.source,
            store=args.store,
            checkpoint=args.checkpoint,
            index=args.index,
            engine=args.engine,
            device=args.device,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            limit=args.limit,
            thumbnails=not args.no_thumbnails,
            skip_duplicate_content=args.skip_duplicate_content,
            progress=not args.no_progress,
            shard_id=args.shard_id,
            num_shards=args.num_shards,
            require_store=args.command == "add",
            **{name: getattr(args, name) for name in QDRANT_FIELDS},
        )
        print(json.dumps(asdict(run_index_job(job)), indent=1))
    elif args.command == "merge":
        try:
            report = merge_stores(args.out, args.parts)
        except MergeError as exc:
            print(f"merge refused: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(asdict(report), indent=1))
        if args.index:
            with CorpusStore.open(args.out) as store:
                options = engine_options(args.engine, args)
                print(f"published {build_index(store, args.index, args.engine, **options)}")
    elif args.command == "reindex":
        with CorpusStore.open(args.store) as store:
            options = engine_options(args.engine, args)
            print(f"published {build_index(store, args.index, args.engine, **options)}")
    elif args.command == "publish":
        if not (args.qdrant_url and args.qdrant_collection):
            print("publish needs --qdrant-url and --qdrant-collection", file=sys.stderr)
            return 2
        from indexer.qdrant_jobs import publish_collection

        options = engine_options("qdrant", args)
        connection = {k: options[k] for k in ("alias", "url", "api_key", "timeout_s", "tls_ca")}
        print(f"published {publish_collection(args.index, args.qdrant_collection, **connection)}")
    elif args.command == "delete":
        with CorpusStore.open(args.store) as store:
            print(f"store: {store.delete(args.ids)} deleted")
        if args.index:
            options = engine_options("qdrant", args)
            index = open_index(args.index, **options)
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
