"""``lexvla serve`` / ``python -m service``: run the search service.

The flags are generated from ``service.core.config.Settings`` (``common.flags``), one per field,
and override the ``LEXVLA_*`` environment variables. The model, store and index are loaded
before the server starts, so a wrong path or a vocabulary mismatch ends the command with one
clear message (exit status 2) instead of a traceback from the lifespan. One worker is served by
uvicorn in this process; several by gunicorn (``service.workers``), which replaces this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from common.flags import add_model_flags, explain_validation_error, model_values
from model.backbones import BackboneLoadError
from service.core.config import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lexvla serve",
        description="Serve interpretable text-to-image search over a LexVLA index. Every "
        "setting is a flag and an environment variable (--max-top-k, LEXVLA_MAX_TOP_K); flags "
        "win over the environment.",
    )
    add_model_flags(p, Settings)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**model_values(args, Settings))


def load(settings: Settings) -> dict[str, Any]:
    """Model, store and index, loaded and checked against each other before serving."""
    from service.search.indexes import index_options, open_handle, open_store
    from service.state import load_model

    if settings.index is None:
        raise ValueError("no index to serve: pass --index or set LEXVLA_INDEX")
    if settings.keys_file is not None:
        from service.core.keys import read_keys

        if not read_keys(settings.keys_file):  # KeysError (a ValueError) when corrupt
            logging.getLogger("service").warning(
                "%s has no keys yet: every request is refused until 'lexvla keys add' makes one",
                settings.keys_file,
            )
    model = load_model(settings)
    store = open_store(settings.store, model.vocabulary) if settings.store else None
    index = open_handle(settings.index, model.vocabulary.hash, index_options(settings))
    return {"model": model, "store": store, "index": index}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"lexvla serve: invalid settings: {explain_validation_error(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from indexer.quiet import quiet_libraries

    quiet_libraries(verbose=settings.log_level == "debug")  # the libraries' INFO lines: debug
    try:
        parts = load(settings)
    except (OSError, ValueError, BackboneLoadError) as exc:  # paths, vocabularies, bad files
        print(f"lexvla serve: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        del parts  # checked; each worker loads its own copy
        return exec_workers(settings)
    import uvicorn

    from service.main import create_app

    app = create_app(settings, **parts)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def exec_workers(settings: Settings) -> int:
    """Replace this process with the gunicorn server of ``settings.workers`` workers
    (``service.workers``), configured through the ``LEXVLA_*`` environment. Returns only when
    the port is taken (status 2)."""
    from service import workers
    from service.core.metrics import MULTIPROC_ENV

    try:
        port = workers.check_port(settings.host, settings.port)
    except OSError as exc:
        print(f"lexvla serve: {exc}", file=sys.stderr)
        return 2
    run_dir = workers.prepare_run_dir(settings.run_dir)
    settings = settings.model_copy(update={"port": port, "run_dir": run_dir})
    env = {**os.environ, **settings_environment(settings), MULTIPROC_ENV: str(run_dir / "metrics")}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "service.workers"], env)
    raise AssertionError("unreachable: execve returned")


def settings_environment(settings: Settings) -> dict[str, str]:
    """``LEXVLA_*`` variables that make ``Settings()`` equal ``settings`` in another process."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(getattr(settings, name), SecretStr):
            value = getattr(settings, name).get_secret_value()
        text = value if isinstance(value, str) else json.dumps(value)
        env[f"LEXVLA_{name.upper()}"] = text
    return env


if __name__ == "__main__":
    sys.exit(main())
