"""``lexvla serve`` / ``python -m service``: run the search service under uvicorn.

Flags override the ``LEXVLA_*`` environment variables (see ``service.core.config``). The model,
store and index are loaded before uvicorn starts, so a wrong path or a vocabulary mismatch ends
the command with one clear message (exit status 2) instead of a traceback from the lifespan.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from service.core.config import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lexvla serve",
        description="Serve interpretable text-to-image search over a LexVLA index. Every flag "
        "has an environment variable (LEXVLA_<FLAG>, e.g. LEXVLA_INDEX); flags win.",
    )
    p.add_argument("--checkpoint", help="LexVLA checkpoint directory")
    p.add_argument("--index", help="index directory (CURRENT + versions/) or a version directory")
    p.add_argument("--store", help="corpus store directory (images, thumbnails)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument("--device", help="torch device for the model (default cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--mmap", action="store_true", default=None, help="memory-map the index")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before 429")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    p.add_argument(
        "--no-warmup", dest="warmup", action="store_false", default=None, help="skip warm-up"
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def load(settings: Settings) -> dict[str, Any]:
    """Model, store and index, loaded and checked against each other before serving."""
    from service.search.indexes import index_options, open_handle, open_store
    from service.state import load_model

    if settings.index is None:
        raise ValueError("no index to serve: pass --index or set LEXVLA_INDEX")
    model = load_model(settings)
    store = open_store(settings.store, model.vocabulary) if settings.store else None
    index = open_handle(settings.index, model.vocabulary.hash, index_options(settings))
    return {"model": model, "store": store, "index": index}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"lexvla serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        parts = load(settings)
    except (OSError, ValueError) as exc:  # missing paths, VocabularyMismatchError, bad files
        print(f"lexvla serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from service.main import create_app

    app = create_app(settings, **parts)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
