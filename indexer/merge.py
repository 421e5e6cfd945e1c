"""Merge corpus stores (the parts of a sharded build) into one store, without re-encoding.

``merge_stores(out, parts)`` copies every live image of each part (its vector row, metadata and
thumbnail) and each part's skipped records into ``out``, creating it if needed. All parts (and
an existing ``out``) must come from the same checkpoint: same vocabulary hash, checkpoint id,
threshold, top-k and word budget (``max_words``); a mismatch is refused before anything is written.

Ids. An id live in two parts is an **error** (sharded builds split ids disjointly, so a
collision means two parts cover the same images, e.g. a part given twice); nothing is written.
An id already live in ``out`` that does not come from an earlier run of this same merge is an
error too.

Resuming. Each part shard is appended to ``out`` as one store shard with a done key naming the
part (its resolved path and creation time) and the shard number, in the same SQLite
transaction (:meth:`CorpusStore.append_shard`). A killed merge run again with the same parts
skips what was committed and copies the rest, in the same order, so it ends with the same store
as an uninterrupted run. A part's deleted images are not copied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.decode import ImageInfo
from indexer.store import CorpusStore

_MUST_MATCH = ("vocabulary_hash", "checkpoint_id", "threshold", "top_k", "max_words")


class MergeError(ValueError):
    """Parts that cannot be merged (another checkpoint or vocabulary, or colliding ids)."""


@dataclass
class MergeReport:
    parts: int = 0
    images: int = 0  # copied by this run
    skipped: int = 0  # skipped records copied by this run
    shards_done_before: int = 0
    shards_written: int = 0


def merge_stores(out: str | Path, parts: Sequence[str | Path]) -> MergeReport:
    """Copy the live images and skipped records of ``parts`` into the store ``out``."""
    if not parts:
        raise MergeError("nothing to merge: give at least one part store")
    resolved = [Path(p).resolve() for p in parts]
    if len(set(resolved)) != len(resolved):
        raise MergeError("a part store is given twice")
    if Path(out).resolve() in resolved:
        raise MergeError(f"the output store {out} cannot also be a part")
    opened: list[CorpusStore] = []
    try:
        for path in parts:
            opened.append(CorpusStore.open(path))
        _check_compatible(opened)
        target = _open_or_create(out, opened[0])
        opened.append(target)  # closed with the parts
        _check_compatible(opened)
        return _merge(target, opened[:-1])
    finally:
        for store in opened:
            store.close()


def _check_compatible(stores: Sequence[CorpusStore]) -> None:
    first = stores[0]
    for store in stores[1:]:
        for key in _MUST_MATCH:
            if store.manifest.get(key) != first.manifest.get(key):
                what = "vocabulary" if key == "vocabulary_hash" else key.replace("_", " ")
                raise MergeError(
                    f"cannot merge {store.root} into the stores of {first.root}: their {what} "
                    f"differs ({store.manifest.get(key)!r} vs {first.manifest.get(key)!r}); "
                    "only stores built with the same checkpoint and settings can be merged"
                )


def _open_or_create(out: str | Path, like: CorpusStore) -> CorpusStore:
    if (Path(out) / "manifest.json").is_file():
        return CorpusStore.open(out, expected_vocabulary=like.vocabulary)
    m = like.manifest
    return CorpusStore.create(
        out, like.vocabulary, m["checkpoint_id"], m["threshold"], m["top_k"], m.get("max_words")
    )


def _part_key(part: CorpusStore) -> str:
    identity = f"{part.root.resolve()}\n{part.manifest['created']}"
    return "merge/" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def _merge(target: CorpusStore, parts: Sequence[CorpusStore]) -> MergeReport:
    report = MergeReport(parts=len(parts))
    done = target.done_keys()
    # refuse colliding ids before writing anything
    owner: dict[str, Path] = {}
    pending: set[str] = set()
    for part in parts:
        key = _part_key(part)
        shards = part.catalog.column("SELECT shard FROM shards ORDER BY shard")
        for shard in shards:
            ids = [i for i, _ in part.catalog.live_rows(shard)]
            for image_id in ids:
                if image_id in owner:
                    raise MergeError(
                        f"image {image_id!r} is in two part stores ({owner[image_id]} and "
                        f"{part.root}); parts of a sharded build never share ids"
                    )
                owner[image_id] = part.root
            if f"{key}/shard-{shard}" not in done:
                pending.update(ids)
    clash = target.catalog.first_live(sorted(pending))
    if clash is not None:
        raise MergeError(f"image {clash!r} is already in the output store {target.root}")
    for part in parts:  # the metadata fields of every part, with one type each
        try:
            target.fields.absorb(part.fields)
        except ValueError as exc:
            raise MergeError(f"{part.root}: {exc}") from None

    for part in parts:
        key = _part_key(part)
        for shard in part.catalog.column("SELECT shard FROM shards ORDER BY shard"):
            done_key = f"{key}/shard-{shard}"
            if done_key in done:
                report.shards_done_before += 1
                continue
            live = part.catalog.live_rows(shard)
            ids = [i for i, _ in live]
            if not ids:
                continue
            rows = part.vectors_of(ids)
            records = [_info(part, i) for i in ids]
            thumbs = [part.thumbnail(i) for i in ids]
            target.append_shard(ids, rows, records, thumbs, done_key=done_key)
            report.images += len(ids)
            report.shards_written += 1
        skipped_key = f"{key}/skipped"
        if skipped_key not in done:
            skipped = part.skipped()
            target.record_skipped(skipped, done_key=skipped_key)
            report.skipped += len(skipped)
    return report


def _info(part: CorpusStore, image_id: str) -> ImageInfo:
    r = part.metadata(image_id)
    return ImageInfo(
        r.id, r.path, r.bytes, r.format, r.width, r.height, r.sha256, dict(r.extra),
        dict(r.metadata),
    )  # fmt: skip
