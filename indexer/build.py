"""Building a search index from a corpus store and publishing it as a new index version.

:func:`build_index` is the last step of an indexing job (:func:`indexer.runner.run_index_job`)
and the whole of ``lexvla index reindex`` (and of ``merge --index``): it reads the store's live
rows, never the images, so re-indexing into another engine never re-encodes anything. The engine
is looked up in the registry (:mod:`indexer.engines.registry`), its options checked against its
build options, and its ``build`` hook does the work (create, add every store shard, publish;
an engine may build its own way, e.g. resumably).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from indexer.engines import DEFAULT_ENGINE, engine
from indexer.engines.engine import Built
from indexer.engines.versions import write_lock
from indexer.store import CorpusStore


def build_engine_index(
    store: CorpusStore,
    index_dir: str | Path,
    engine_name: str,
    options: Mapping[str, Any] | None = None,
    *,
    sharded: bool = False,
    progress: bool = False,
) -> Built:
    """Build with engine ``engine_name`` and its build ``options`` (unknown ones refused).

    ``sharded``: this is one of several jobs building one index; an engine whose sharded jobs
    write one shared target does so and publishes nothing (:meth:`Engine.publish_shared` later).
    """
    chosen = engine(engine_name)
    checked = chosen.options("build", options)
    chosen.check_build(checked, sharded)
    if sharded:
        return chosen.build(store, Path(index_dir), checked, sharded=sharded, progress=progress)
    with write_lock(index_dir):  # live writes wait; none is lost between read and publish
        return chosen.build(store, Path(index_dir), checked, sharded=sharded, progress=progress)


def build_index(
    store: CorpusStore, index_dir: str | Path, engine: str = DEFAULT_ENGINE, **options: Any
) -> Path:
    """Build an index of every live image of the store and publish it as a new version."""
    built = build_engine_index(store, index_dir, engine, options)
    assert built.version is not None  # an unsharded build always publishes
    return built.version
