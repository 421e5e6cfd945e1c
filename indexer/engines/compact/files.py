"""The blocks of a compact index's version directory: writing, linking and reading them.

``blocks/bNNNNNN/`` holds one block's arrays (:meth:`Block.save`; immutable, so a version that
keeps a block of one already on disk hard-links its folder instead of writing it again), and
``live/bNNNNNN.npy`` the live mask of a block that has deletions. The manifest (``index.json``,
:func:`write_version`) lists the blocks with their rows, postings, scales and error bounds, and
the block layout they were written in; :func:`read_version` checks it before reading. A build's
sealed blocks wait in a :class:`Spill` folder until the save that links them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from indexer import filters as wf
from indexer.engines.base import IndexManifest, link_tree
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
        if source is not None and source.is_dir():
            if target.exists() and not target.samefile(source):
                shutil.rmtree(target)  # an earlier save's block there moved or was merged
            if not target.exists():
                link_tree(source, target)
        else:
            block.save(target)
        mask = path / "live" / f"{name}.npy"
        if not snap.live[b].all():
            mask.parent.mkdir(exist_ok=True)
            np.save(mask, snap.live[b])
        elif mask.exists():
            mask.unlink()  # an earlier save into this folder
        entries.append(
            {"name": name, "rows": block.rows, "postings": block.postings,
             "scale": float(snap.scales[b]), "error": errors[b]}
        )  # fmt: skip
    return entries


def write_version(
    path: Path, manifest: IndexManifest, snap: Snapshot, sources: list[Path | None],
    errors: list[float], params: dict[str, Any],
) -> list[Path]:  # fmt: skip
    """Write the blocks of ``snap`` (:func:`write_blocks`) and ``manifest``, its counts, scale
    and ``params`` completed with the block layout and the block entries; returns the blocks'
    folders."""
    entries = write_blocks(path, snap, sources, errors)
    live = sum(int(m.sum()) for m in snap.live)
    manifest.count = live
    manifest.deleted = sum(b.rows for b in snap.blocks) - live
    manifest.quantisation_scale = float(snap.scales.max()) if len(snap.scales) else None
    # the layout the blocks were written in is checked by check_layout when they are read
    manifest.params = {**params, "layout": LAYOUT, "blocks": entries}
    manifest.save(path)
    return [path / "blocks" / entry["name"] for entry in entries]


def read_version(
    path: Path, engine: str, mmap: bool, populate: bool
) -> tuple[IndexManifest, list[tuple[Block, float, float]], list[Path], dict[int, np.ndarray]]:
    """The manifest of the version at ``path`` and its blocks (:func:`read_blocks`), after
    checking that it is an ``engine`` index of the word filters' rule and block layout this
    code reads."""
    manifest = IndexManifest.load(path)
    if manifest.engine != engine:
        raise ValueError(f"{path} holds a {manifest.engine!r} index, not a {engine!r} one")
    wf.check_rule(manifest.params, f"the compact index at {path}")
    check_layout(manifest.params, path)
    return manifest, *read_blocks(path, manifest.params.get("blocks", []), mmap, populate)


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


class Spill:
    """Where a build writes the blocks it seals and maps them back, so that it holds one block
    in memory at a time; a save then hard-links them (same file system: no copy). The blocks
    go to a fresh folder in ``parent``, never to one an earlier build left behind."""

    def __init__(self, parent: Path):
        self.parent = parent
        self.folder: Path | None = None
        self.count = 0

    def put(self, block: Block) -> tuple[Block, Path]:
        """``block`` written to the next folder and mapped back, and that folder."""
        if self.folder is None:
            self.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="spill-", dir=self.parent))
        spilled = self.folder / f"s{self.count:06d}"
        self.count += 1
        block.save(spilled)
        return Block.load(spilled, mmap=True), spilled
