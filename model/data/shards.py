"""Webdataset tar shards as img2dataset writes them: reading, naming rules and shard patterns.

A shard is a plain ``.tar``. A sample is the group of *consecutive* members that share a key:
the member name up to the first dot of its base name (webdataset's rule), so ``a/b.jpg``,
``a/b.txt`` and ``a/b.json`` are the image, caption and metadata of sample ``a/b``. Hidden
members (a base name starting with a dot, such as the ``._b.jpg`` resource forks that macOS tar
adds, or ``.DS_Store``) belong to no sample and are ignored.

We read shards with ``tarfile`` rather than the ``webdataset`` package because both users need
what a streaming iterator does not give: :func:`shard_records` indexes a shard from its tar
headers alone, as (key, member offsets) records, so training can shuffle and resume by skipping
records whose data it never reads, and the indexer can read each image's bytes in the thread
that decodes it. Errors never raise out of the iteration: a shard that cannot be opened, or whose
tar structure breaks, ends its records with an ``unreadable_shard`` marker.

Shard patterns (:func:`resolve_shards`) are webdataset's: brace ranges and lists expanded with
the ``braceexpand`` package that webdataset itself uses (``{00000..00099}``, several per name,
``{a,b}``), then shell globs; a folder means every ``.tar`` in it.
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from braceexpand import braceexpand

from model.data.decode import DecodeError
from model.data.skips import Skipped, log_skip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # image members, in order of preference
CAPTION_EXTENSION = "txt"
METADATA_EXTENSION = "json"


class ShardRecord(NamedTuple):
    """A sample's place in a shard: where each member's data lies, as (offset, size)."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]]

    @property
    def source(self) -> str:
        return f"{self.shard}:{self.key}"

    @property
    def image_extension(self) -> str | None:
        return next((e for e in IMAGE_EXTENSIONS if e in self.members), None)


def is_hidden(name: str) -> bool:
    """A dot-file (``.DS_Store``, a macOS ``._x.jpg`` resource fork): never a sample."""
    return name.rpartition("/")[2].startswith(".")


def split_member_name(name: str) -> tuple[str, str] | None:
    """``folder/key.ext.more`` -> (``folder/key``, ``ext.more``); None for hidden or dotless names."""
    folder, _, base = name.rpartition("/")
    if is_hidden(base) or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def shard_records(path: Path) -> Iterator[ShardRecord | Skipped]:
    """The shard's records in tar order, from headers only; a broken tar ends with a Skipped.

    A truncated shard either fails inside ``tarfile`` or, when it was cut between members, ends
    without the two zero blocks that close every tar: both become one ``unreadable_shard``
    marker, and the sample being grouped at the break (possibly missing members) is dropped.
    """
    key: str | None = None
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                split = split_member_name(info.name) if info.isfile() else None
                if split is None:
                    continue
                if split[0] != key:
                    if key is not None and members:
                        yield ShardRecord(path, key, members)
                    key, members = split[0], {}
                members[split[1]] = (info.offset_data, info.size)
            if path.stat().st_size - tar.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker: the shard is truncated")
    except (OSError, tarfile.TarError) as err:
        yield log_skip(Skipped("unreadable_shard", str(path), f"{type(err).__name__}: {err}"))
        return
    if key is not None and members:
        yield ShardRecord(path, key, members)


def read_members(record: ShardRecord, exts: Sequence[str]) -> dict[str, bytes]:
    """The data of some members of a record; DecodeError (a skip reason) if it cannot be read."""
    data: dict[str, bytes] = {}
    try:
        with record.shard.open("rb") as f:
            for ext in exts:
                offset, size = record.members[ext]
                f.seek(offset)
                data[ext] = f.read(size)
                if len(data[ext]) < size:
                    raise DecodeError("truncated_record", f"{ext}: end of file")
    except OSError as err:
        raise DecodeError("unreadable_shard", f"{type(err).__name__}: {err}") from None
    return data


def count_samples(shards: Sequence[Path]) -> int:
    """Records in ``shards`` (tar headers only), e.g. to fix the number of steps of an epoch."""
    return sum(1 for p in shards for r in shard_records(p) if isinstance(r, ShardRecord))


def expand_braces(pattern: str) -> list[str]:
    """Webdataset's brace expansion: ``x/{0..1}{0..2}.tar`` -> six names, padding kept."""
    return list(braceexpand(pattern))


def resolve_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths, sorted, from a folder of ``.tar`` files, a brace pattern, a glob or a list.

    Brace patterns may name shards that do not exist (img2dataset leaves failed shards out);
    those are reported as ``unreadable_shard`` when read, so a pattern works for a partial
    download. Raises ValueError when nothing matches, or when not one named shard exists.
    """
    if not isinstance(spec, str | Path):
        paths = [Path(p) for p in spec]
    elif Path(spec).is_dir():
        paths = [p for p in Path(spec).glob("*.tar") if not is_hidden(p.name)]
    else:
        paths = []
        for name in expand_braces(str(spec)):
            paths += [Path(p) for p in glob.glob(name)] if glob.has_magic(name) else [Path(name)]
    if not any(p.exists() for p in paths):
        raise ValueError(f"no .tar shards found for {str(spec)!r}")
    return sorted(set(paths), key=str)


def looks_like_shards(spec: str) -> bool:
    """A spec naming tar shards: ends in ``.tar`` or holds a brace pattern or a glob."""
    return spec.lower().endswith(".tar") or "{" in spec or glob.has_magic(spec)
