"""``lexvla index ...`` / ``python -m indexer ...``: thin commands over the indexer's functions.

lexvla index build --source photos/ --store corpus/ --checkpoint ckpt/ --index index/
lexvla index add --images new-photos/ --store corpus/ --checkpoint ckpt/ --index index/
lexvla index build --source photos.csv ... --collection family --field tags:keywords
lexvla index build --images photos/ --store parts/shard-0 --checkpoint ckpt/ --shard-id 0 --num-shards 3
lexvla index merge --out corpus/ parts/shard-0 parts/shard-1 parts/shard-2 [--index index/]
lexvla index reindex --store corpus/ --index index-lucene/ --engine lucene
lexvla index reindex --store corpus/ --index index-q/ --engine qdrant --qdrant-datatype float16
lexvla index build ... --engine qdrant --qdrant-url http://qdrant:6333 [--shard-id 0 --num-shards 3
    --qdrant-collection lexvla-2026-12]   then   lexvla index publish --index index-q/
    --qdrant-url http://qdrant:6333 --qdrant-collection lexvla-2026-12
lexvla index delete --store corpus/ --index index/ ID [ID ...]
lexvla index optimize --index index/   (after many live writes; a server does it when they pause)
lexvla index export-jsonl --store corpus/ --out vectors.jsonl [--keys index --scale 100]
lexvla index info corpus/   (or an index directory)

The flags of ``build`` and ``add`` are generated from :class:`indexer.job.IndexJob` (its
field descriptions are the help, its defaults the defaults), and every command that writes an
index takes each registered engine's build options as ``--<engine>-<option>`` flags generated
from the engine's options model (``delete`` and ``optimize`` its open options); a flag of
another engine than the one chosen is refused. Bad input (a missing folder, a manifest without
an image column, an unknown engine, a checkpoint that is not one) ends the command with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from copy import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from common.flags import add_model_flags, explain_validation_error, model_values
from indexer.build import build_index
from indexer.engines import DEFAULT_ENGINE, engine, names, open_index, publish
from indexer.engines.engine import Kind
from indexer.engines.registry import engines, options_by_engine, split_options
from indexer.engines.versions import resolve, write_lock
from indexer.export import export_store_jsonl
from indexer.job import IndexJob
from indexer.live import optimize
from indexer.merge import MergeError, merge_stores
from indexer.quiet import quiet_libraries
from indexer.runner import run_index_job
from indexer.store import CorpusStore
from model.backbones import BackboneLoadError

# IndexJob fields without a flag, and why: the sub-command sets them.
JOB_FLAGS_EXCLUDED = {
    "require_store": "set by `index add`",
    "engine_options": "filled by the engines' own flags (--<engine>-<option>)",
}
# IndexJob fields whose flag is written by hand, and why.
JOB_FLAGS_BY_HAND = {"fields": "--field NAME:TYPE, repeatable (a generated list flag is not)"}
# Flags of every sub-command that are no IndexJob field: how much the command prints.
COMMON_FLAGS = {"verbose"}
# What bad input raises before or while a job runs; each becomes one line on stderr.
INPUT_ERRORS = (OSError, ValueError, KeyError, ValidationError, BackboneLoadError)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lexvla index", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="log progress details, and the libraries' own (transformers, Java)")  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", parents=[common], help="encode new images of a source into a store (resumable)"
    )
    a = sub.add_parser(
        "add", parents=[common], help="index only the new images of a source into an existing store"
    )
    for p in (b, a):
        add_model_flags(
            p,
            IndexJob,
            exclude={*JOB_FLAGS_EXCLUDED, *JOB_FLAGS_BY_HAND},
            aliases={"source": ["--images"]},
            choices={"engine": names()},
        )
        add_model_flags(p, engine_flags("build"))
        p.add_argument("--field", action="append", dest="fields", metavar="NAME:TYPE",
                       default=argparse.SUPPRESS, help="declare a metadata field's type (keyword, keywords, integer, float, "
                            "datetime, geo); repeatable")  # fmt: skip
    m = sub.add_parser(
        "merge", parents=[common], help="merge part stores (sharded builds) into one, no encoding"
    )
    m.add_argument("--out", required=True, help="merged store (created, or resumed)")
    m.add_argument("parts", nargs="+", help="part stores, in order")
    m.add_argument("--index", help="also publish a search index of the merged store here")
    m.add_argument("--engine", choices=names(), default=DEFAULT_ENGINE, help=_engines_help())
    add_model_flags(m, engine_flags("build"))
    r = sub.add_parser(
        "reindex", parents=[common], help="build a new index version from a store (no encoding)"
    )
    r.add_argument("--store", required=True)
    r.add_argument("--index", required=True)
    r.add_argument("--engine", choices=names(), default=DEFAULT_ENGINE, help=_engines_help())
    add_model_flags(r, engine_flags("build"))
    d = sub.add_parser(
        "delete", parents=[common], help="delete images from a store (and its index)"
    )
    d.add_argument("--store", required=True)
    d.add_argument("--index")
    d.add_argument("ids", nargs="+")
    add_model_flags(d, engine_flags("open"))
    shared = [each for each in engines() if each.shares_writes()]
    if shared:  # engines whose sharded jobs write one shared target (a server collection)
        q = sub.add_parser(
            "publish", parents=[common], help="publish what sharded jobs wrote into one shared "
            "target (a server collection) and make it the one searched",
        )  # fmt: skip
        q.add_argument("--index", required=True, help="index directory that gets the new version")
        q.add_argument("--engine", choices=[e.name for e in shared], default=shared[0].name)
        add_model_flags(q, engine_flags("build", shared))
    o = sub.add_parser(
        "optimize", parents=[common], help="rewrite what live writes left (small blocks, deleted "
        "rows) into a batch build's shape, as a new version",
    )  # fmt: skip
    o.add_argument("--index", required=True)
    add_model_flags(o, engine_flags("open"))
    e = sub.add_parser(
        "export-jsonl", parents=[common], help='write {"id", "vector": {word: weight}} lines'
    )
    e.add_argument("--store", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--keys", choices=["word", "index"], default="word")
    e.add_argument("--scale", type=float, help="write integer impacts round(w * scale)")
    i = sub.add_parser("info", parents=[common], help="print the manifest of a store or an index")
    i.add_argument("path")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return _run(args)
    except INPUT_ERRORS as exc:
        print(f"lexvla index {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        if not any(e.get("loc") for e in exc.errors()):  # the whole job (an engine option)
            return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        return explain_validation_error(exc)
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return " ".join(str(exc).split()) or type(exc).__name__


def _run(args: argparse.Namespace) -> int:
    if args.command in ("build", "add"):
        values = model_values(args, IndexJob)
        if args.command == "add" and not (Path(values["store"]) / "manifest.json").is_file():
            raise FileNotFoundError(
                f"no corpus store at {values['store']}: `add` adds to an existing store; "
                "create it with `build`"
            )
        values |= model_values(args, engine_flags("build"))
        job = IndexJob(**values, require_store=args.command == "add")
        print(json.dumps(run_index_job(job).as_dict(), indent=1))
    elif args.command == "merge":
        try:
            report = merge_stores(args.out, args.parts)
        except MergeError as exc:
            raise MergeError(f"merge refused: {exc}") from exc
        print(json.dumps(asdict(report), indent=1))
        if args.index:
            with CorpusStore.open(args.out) as store:
                options = _build_options(args)
                print(f"published {build_index(store, args.index, args.engine, **options)}")
    elif args.command == "reindex":
        with CorpusStore.open(args.store) as store:
            options = _build_options(args)
            print(f"published {build_index(store, args.index, args.engine, **options)}")
    elif args.command == "publish":
        chosen = engine(args.engine)
        options = chosen.options("build", _build_options(args))
        print(f"published {chosen.publish_shared(Path(args.index), options)}")
    elif args.command == "delete":
        with CorpusStore.open(args.store) as store:
            print(f"store: {store.delete(args.ids)} deleted")
            if args.index:
                with write_lock(args.index):  # live writes wait
                    index = open_index(args.index, per_engine=options_by_engine(args, "open"))
                    deleted = index.delete(args.ids)
                    index.fields = store.field_columns()
                    print(f"index: {deleted} deleted; published {publish(index, args.index)}")
    elif args.command == "optimize":
        with write_lock(args.index):  # live writes wait
            index = open_index(args.index, per_engine=options_by_engine(args, "open"))
            try:
                done = optimize(index) and publish(index, args.index)
            finally:
                index.close()
        print(f"published {done}" if done else "nothing to rewrite: the index has a build's shape")
    elif args.command == "export-jsonl":
        lines = export_store_jsonl(args.store, args.out, args.keys, args.scale)
        print(f"wrote {lines} lines to {args.out}")
    elif args.command == "info":
        path = Path(args.path)
        manifest = path / "manifest.json"
        target = manifest if manifest.is_file() else resolve(path) / "index.json"
        if not target.is_file():
            raise FileNotFoundError(f"{path} is neither a corpus store nor an index")
        print(target.read_text())
    return 0


def engine_flags(kind: Kind, only: Sequence[Any] | None = None) -> type[BaseModel]:
    """One model whose fields are the engines' ``kind`` options under their outside names
    (``qdrant_url``), for :func:`~common.flags.add_model_flags`: each engine's own defaults,
    types and descriptions make its flags."""
    fields: dict[str, Any] = {}
    for each in only if only is not None else engines():
        model = each.options_model(kind)
        for outside, option in each.outside_names(kind).items():
            info = copy(model.model_fields[option])
            info.description = f"{each.name} engine: {info.description or option}"
            fields[outside] = (info.annotation, info)
    return create_model(f"{kind.title()}EngineFlags", **fields)


def _engines_help() -> str:
    listed = "; ".join(f"{each.name}: {each.summary}" for each in engines())
    return f"index engine ({listed}); default: {DEFAULT_ENGINE}".replace("%", "%%")


def _build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The build options of ``--engine`` that were given (another engine's are refused)."""
    return split_options(model_values(args, engine_flags("build")), args.engine, "build")
