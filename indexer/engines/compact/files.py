"""The blocks of a compact index's version directory: writing, linking and reading them.

``blocks/bNNNNNN/`` holds one block's arrays (:meth:`Block.save`; immutable, so a version that
keeps a block of the one it came from hard-links its folder instead of writing it again), and
``live/bNNNNNN.npy`` the live mask of a block that has deletions. The manifest
(``index.json``, written by :meth:`indexer.engines.compact.index.CompactIndex.save`) lists the
blocks with their rows, postings, scales and error bounds, and the block layout they were written in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indexer.engines.base import link_tree
from indexer.engines.compact.block import LAYOUT, Block
from indexer.engines.compact.snapshot import Snapshot


def check_layout(params: dict[str, Any], path: Path) -> None:
    """Refuse an index whose blocks were written in another layout than this code reads."""
    layout = params.get("layout", 1)  # indexes before byte-gap segments did not record it
    if layout != LAYOUT:
        raise ValueError(
            f"the compact index at {path} has block layout {layout}, this code reads layout "
            f"{LAYOUT}; rebuild the index from the store (`lexvla index reindex`)"
        )


def write_blocks(
    path: Path, snap: Snapshot, sources: list[Path | None], errors: list[float]
) -> list[dict[str, Any]]:
    """Write (or hard-link, where ``sources`` names the folder a block was loaded from) every
    block of ``snap`` and the live masks of blocks with deletions; returns the manifest's
    block entries."""
    entries = []
    for b, block in enumerate(snap.blocks):
        name = f"b{b:06d}"
        target = path / "blocks" / name
        source = sources[b]
        if source is not None:
            link_tree(source, target)
        else:
            block.save(target)
        if not snap.live[b].all():
            (path / "live").mkdir(exist_ok=True)
            np.save(path / "live" / f"{name}.npy", snap.live[b])
        entries.append(
            {"name": name, "rows": block.rows, "postings": block.postings,
             "scale": float(snap.scales[b]), "error": errors[b]}
        )  # fmt: skip
    return entries


def read_blocks(
    path: Path, entries: list[dict[str, Any]], mmap: bool, populate: bool
) -> tuple[list[tuple[Block, float, float]], list[Path], dict[int, np.ndarray]]:
    """The blocks the manifest's ``entries`` list, as (block, scale, error), their folders, and
    the live masks of those with deletions (by block number). Memory-mapped with ``mmap``,
    every page mapped at once with ``populate`` too."""
    blocks, sources, masks = [], [], {}
    for b, entry in enumerate(entries):
        source = path / "blocks" / entry["name"]
        block = Block.load(source, mmap)
        if mmap and populate:
            block.populate()
        blocks.append((block, entry["scale"], entry["error"]))
        sources.append(source)
        mask = path / "live" / f"{entry['name']}.npy"
        if mask.is_file():
            masks[b] = np.load(mask)
    return blocks, sources, masks
