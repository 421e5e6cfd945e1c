"""Building a ``qdrant`` index from a corpus store: resumable, idempotent, bounded in memory.

:func:`build_qdrant` upserts the store's live images shard by shard, each point with the
image's metadata record (filters read it; a payload index per field of the store's registry),
into a Qdrant Edge shard (embedded) or a server collection, then publishes the index as a new
version (embedded: the shard moves into the version directory; server: the version's manifest
names the collection, and the alias is swapped to it). Progress is recorded after each store shard is upserted (and, for
Qdrant Edge, flushed) in ``<index>/versions/.build-qdrant-<key>.json``; a job killed at any point
and run again reopens the same work shard or collection and skips the shards recorded as done.
Upserts are idempotent (point ids derive from image ids), so the shard that was being written
when the job died is simply written again: nothing lost, nothing duplicated. The key names the
store (path, creation time, counts), so a store that changed in between starts a fresh build.

Sharded jobs (``--shard-id i --num-shards n``) against one server upsert their slice straight
into one shared collection (``--qdrant-collection``) and do not publish; once all have finished,
:func:`publish_collection` (``lexvla index publish``) publishes the collection and swaps the alias.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json, now_iso
from indexer.engines.qdrant.index import QdrantIndex
from indexer.engines.versions import VERSIONS, publish
from indexer.store import CorpusStore


def build_qdrant(
    store: CorpusStore,
    index_dir: str | Path,
    publish_version: bool = True,
    progress: bool = False,
    **options: Any,
) -> tuple[Path | None, QdrantIndex]:
    """Upsert every live image of ``store``; publish unless ``publish_version`` is False.

    ``options`` are :meth:`QdrantIndex.create`'s. Returns (the published version or None, the
    index).
    """
    versions = Path(index_dir) / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    server = bool(options.get("url") or options.get("client") is not None)
    m = store.manifest
    identity = f"{store.root.resolve()}\n{m['created']}\n{json.dumps(m['counts'], sort_keys=True)}"
    target = f"server:{options.get('collection') or ''}" if server else "embedded"
    key = hashlib.sha256(f"{identity}\n{target}".encode()).hexdigest()[:12]
    marker = versions / f".build-qdrant-{key}.json"
    state: dict[str, Any] = (
        json.loads(marker.read_text()) if marker.is_file() else {"done": [], "started": now_iso()}
    )
    if server:
        alias = options.get("alias", "lexvla")
        stamp = str(state["started"]).replace(":", "").replace("-", "")[:15].lower()
        state.setdefault("collection", options.get("collection") or f"{alias}-{stamp}")
        options["collection"] = state["collection"]
    else:
        workdir = versions / f".build-qdrant-{key}"
        if not (workdir / "shard").exists():
            state["done"] = []  # the work shard is gone: everything is written again
        elif not state["done"]:
            shutil.rmtree(workdir)  # a build that recorded nothing: start clean
        options["workdir"] = workdir
    atomic_write_json(marker, state)
    index = QdrantIndex.create(
        len(store.vocabulary), store.vocabulary.hash, m["checkpoint_id"], m["threshold"], **options
    )
    index.declare_fields(store.fields)  # payload indexes of the metadata fields
    done = set(state["done"])
    shards = store.iter_numbered_shards()
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc="qdrant upsert", unit="shard", total=m["counts"].get("shards"))
    for shard, ids, rows in shards:
        if shard in done:
            continue
        records = store.metadata_records(ids)
        index.upsert(ids, rows, store.payloads(ids), records=[records.get(i) for i in ids])
        index.backend.flush()
        done.add(shard)
        state["done"] = sorted(done)
        atomic_write_json(marker, state)
    if not publish_version:
        return None, index
    index.fields = store.field_columns()
    version = publish(index, index_dir)
    index.activate()
    marker.unlink()
    return version, index


def publish_collection(index_dir: str | Path, collection: str, **connection: Any) -> Path:
    """Publish an existing server collection (a sharded build's) and point the alias at it."""
    index = QdrantIndex.attach(collection, **connection)
    version = publish(index, index_dir)
    index.activate()
    return version
