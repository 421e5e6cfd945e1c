"""The data formats training and the indexer share: one reader per format, one set of rules.

- ``sources``: folder / manifest / webdataset -> :class:`SourceItem` records with stable ids
  (the indexer's input);
- ``manifest``: CSV/JSONL manifests, their column names and image-root rule (training's
  manifest datasets and the indexer's manifest source);
- ``shards``: webdataset tar shards (sample keys, header-only record index, brace patterns);
- ``decode``: bytes -> upright RGB image or a reason; caption cleaning;
- ``skips``: :class:`Skipped` markers with reason codes, and :class:`SkipCounter`.

It sits beside ``model.preprocessing`` (which turns the decoded images into pixel tensors), so
``training`` and ``indexer`` both depend on it and on nothing of each other. It imports no web,
index or training library (``braceexpand``, webdataset's own brace expander, is the one
dependency beyond Pillow); crash-safe writes are ``common.atomic``'s.
"""

from typing import TYPE_CHECKING

from common.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MAX_PIXELS": ".decode",
    "DecodeError": ".decode",
    "DecodedImage": ".decode",
    "Manifest": ".manifest",
    "ManifestImage": ".manifest",
    "ManifestRow": ".manifest",
    "SKIP_REASONS": ".skips",
    "ShardRecord": ".shards",
    "SkipCounter": ".skips",
    "Skipped": ".skips",
    "SourceItem": ".sources",
    "SourceKind": ".sources",
    "clean_caption": ".decode",
    "decode_bytes": ".decode",
    "decode_image": ".decode",
    "detect_kind": ".sources",
    "expand_braces": ".shards",
    "iter_source": ".sources",
    "load_image": ".decode",
    "log_skip": ".skips",
    "read_manifest": ".manifest",
    "resolve_shards": ".shards",
    "shard_records": ".shards",
}

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SKIP_REASONS",
    "DecodeError",
    "DecodedImage",
    "Manifest",
    "ManifestImage",
    "ManifestRow",
    "ShardRecord",
    "SkipCounter",
    "Skipped",
    "SourceItem",
    "SourceKind",
    "clean_caption",
    "decode_bytes",
    "decode_image",
    "detect_kind",
    "expand_braces",
    "iter_source",
    "load_image",
    "log_skip",
    "read_manifest",
    "resolve_shards",
    "shard_records",
]

if TYPE_CHECKING:
    from model.data.decode import (
        DEFAULT_MAX_PIXELS,
        DecodedImage,
        DecodeError,
        clean_caption,
        decode_bytes,
        decode_image,
        load_image,
    )
    from model.data.manifest import Manifest, ManifestImage, ManifestRow, read_manifest
    from model.data.shards import ShardRecord, expand_braces, resolve_shards, shard_records
    from model.data.skips import SKIP_REASONS, SkipCounter, Skipped, log_skip
    from model.data.sources import SourceItem, SourceKind, detect_kind, iter_source

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
