"""Search engines behind one protocol (``base.SearchIndex``), one registry, and opening an index.

Package map:

- ``base.py``: the protocol every index implements (with its defaults), the manifest
  (``index.json``) and helpers the engines share (query rows, top-k, CSR files, hard links);
- ``engine.py``: what an engine declares (:class:`Engine`: name, build and open options as
  pydantic models, hooks create/open/build/publish_shared);
- ``registry.py``: the engines by name, and options spelt ``<engine>_<option>`` outside;
- ``versions.py``: versioned index directories (``CURRENT``, :func:`publish`, ``prune``);
- one sub-package per engine: ``memory/`` (exact scipy engine, the test oracle), ``compact/``
  (the default: quantised impact index, memory-mapped, compiled kernels), ``lucene/`` (Anserini
  impact index), ``qdrant/`` (Qdrant Edge in-process, or a server/cluster).

:func:`open_index` opens an index directory's current version with the engine its manifest names
(with the version's metadata columns, :mod:`indexer.fields`) and refuses one built with another
vocabulary. Its options are checked against that engine's
open options: an unknown one is refused in one line naming the engine's known options.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from indexer.engines.base import IndexManifest, SearchIndex
from indexer.engines.engine import Engine, EngineOptionError, EngineOptions
from indexer.engines.registry import DEFAULT_ENGINE, engine, names, register, unregister
from indexer.engines.versions import FIELDS, publish, resolve
from indexer.fields import FieldColumns

__all__ = [
    "DEFAULT_ENGINE",
    "Engine",
    "EngineOptionError",
    "EngineOptions",
    "IndexManifest",
    "SearchIndex",
    "engine",
    "names",
    "open_index",
    "publish",
    "register",
    "unregister",
]


def open_index(
    path: str | Path,
    vocabulary_hash: str | None = None,
    per_engine: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> SearchIndex:
    """Open the current version of an index directory (or a version directory itself).

    ``options`` are the open options of the engine the manifest names; ``per_engine`` maps
    engine names to theirs, for a caller that does not know the engine beforehand (the service,
    ``lexvla index delete``): the manifest's engine takes its entry, and every entry is checked.
    """
    version = resolve(path)
    manifest = IndexManifest.load(version)
    if vocabulary_hash is not None:
        manifest.check_vocabulary(vocabulary_hash)
    for name, given in (per_engine or {}).items():
        engine(name).options("open", given)
    chosen = engine(manifest.engine)
    given = {**(per_engine or {}).get(chosen.name, {}), **options}
    index = chosen.open(version, chosen.options("open", given))
    if (version / FIELDS).is_dir():
        index.fields = FieldColumns.open(version / FIELDS)
    return index
