"""Writing samples as img2dataset-style webdataset shards (the form ``shards.py`` reads).

Used to turn the synthetic shapes set (or any dataset of PIL images and captions) into shards
for the demo, the indexer and tests. Layout, as img2dataset writes it: ``00000.tar``,
``00001.tar``, ... with members ``<key>.jpg`` (or ``png``/``webp``), ``<key>.txt`` and
``<key>.json``, where ``key`` is the shard number (5 digits) followed by the sample's number in
the shard (4 digits, more for larger shards). Member times are fixed so that the same samples
give byte-identical shards, and each shard is written under a temporary name and renamed, so a
killed writer never leaves a shard that looks complete (``common.atomic``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from itertools import chain, count, islice
from pathlib import Path
from typing import Any

from PIL import Image

from common.atomic import fsync_file, temp_path

_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def encode_image(image: Image.Image, image_format: str = "jpg", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format in ("jpg", "webp") else {}
    image.save(buffer, format=_FORMATS[image_format], **options)
    return buffer.getvalue()


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    image_format: str = "jpg",
    quality: int = 90,
) -> list[Path]:
    """Write ``{"image": PIL, "caption": str, "meta": dict (optional)}`` samples to shards.

    ``Skipped`` markers or other non-samples are not accepted: write what you mean to train on.
    Returns the shard paths in order.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(samples_per_shard - 1)))
    iterator = iter(samples)
    paths: list[Path] = []
    for shard in count():
        first = next(iterator, None)
        if first is None:
            break
        path = out / f"{shard:05d}.tar"
        temporary = temp_path(path)
        with tarfile.open(temporary, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            chunk = chain([first], islice(iterator, samples_per_shard - 1))
            for within, sample in enumerate(chunk):
                key = f"{shard:05d}{within:0{width}d}"
                meta = {"key": key, "caption": sample["caption"], **dict(sample.get("meta") or {})}
                image = encode_image(sample["image"], image_format, quality)
                _add(tar, f"{key}.{image_format}", image)
                _add(tar, f"{key}.txt", str(sample["caption"]).encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        fsync_file(temporary)
        temporary.replace(path)
        paths.append(path)
    return paths
