"""Building a search index from a corpus store and publishing it as a new index version.

:func:`build_index` is the last step of an indexing job (:func:`indexer.runner.run_index_job`)
and the whole of ``lexvla index reindex`` (and of ``merge --index``): it reads the store's live
rows, never the images, so re-indexing into another engine never re-encodes anything. The
``qdrant`` engine builds resumably through :func:`indexer.engines.qdrant.jobs.build_qdrant`.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path
from typing import Any

from indexer.engines import DEFAULT_ENGINE, engine_class, publish
from indexer.store import CorpusStore


def build_index(
    store: CorpusStore, index_dir: str | Path, engine: str = DEFAULT_ENGINE, **options: Any
) -> Path:
    """Build an index of every live image of the store and publish it as a new version.

    Engines that take them get two hints: ``expected_rows`` (the store's count, to size their
    blocks evenly) and ``spill_dir`` (a folder beside the index, on its file system, where they
    may write finished parts so that the build's memory stays bounded; removed afterwards).
    The qdrant engine builds resumably (:func:`indexer.engines.qdrant.jobs.build_qdrant`).
    """
    if engine == "qdrant":
        from indexer.engines.qdrant.jobs import build_qdrant

        version, _ = build_qdrant(store, index_dir, **options)
        assert version is not None
        return version
    manifest = store.manifest
    create = engine_class(engine).create
    index_dir = Path(index_dir)
    spill = index_dir / f".build-{os.getpid()}"
    hints = {"expected_rows": store.count, "spill_dir": spill}
    accepted = inspect.signature(create).parameters
    options = {k: v for k, v in hints.items() if k in accepted} | options
    try:
        index = create(
            len(store.vocabulary),
            store.vocabulary.hash,
            manifest["checkpoint_id"],
            manifest["threshold"],
            **options,
        )
        for ids, rows in store.iter_shards():
            index.add(ids, rows)
        return publish(index, index_dir)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
