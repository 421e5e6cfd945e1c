"""A corpus store's vector shards (``vectors/shard-NNNNN.npz`` and ``.ids.json``): written
atomically, and read in place (memory-mapped) without loading them."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_write_json, fsync_file, temp_path


def shard_path(folder: Path, shard: int) -> Path:
    """The matrix file of shard number ``shard`` in a store's ``vectors`` folder."""
    return folder / f"shard-{shard:05d}.npz"


def write_shard(folder: Path, shard: int, ids: list[str], rows: sp.csr_matrix) -> None:
    """Write shard ``shard``: the ids, then the float32 matrix (uncompressed, so that
    :func:`map_csr_npz` maps it) under a temporary name, fsynced and renamed into place."""
    path = shard_path(folder, shard)
    matrix = sp.csr_matrix(rows, dtype=np.float32)
    matrix.sort_indices()
    tmp = temp_path(path).with_suffix(".npz")
    sp.save_npz(tmp, matrix, compressed=False)
    fsync_file(tmp)
    atomic_write_json(path.with_suffix(".ids.json"), ids)
    os.replace(tmp, path)


def map_csr_npz(path: Path) -> sp.csr_matrix:
    """A shard written by ``save_npz(compressed=False)``, its arrays memory-mapped in place.

    Re-scoring reads a few rows of many shards per query (40 candidates at 1M images touch ~40
    of ~1,000 shards): mapping costs a few page reads where loading a shard would read all of it
    (~8 MB). An uncompressed .npz is a zip whose members are stored as-is, so each .npy member
    is mapped at its offset; a compressed member (older stores) is loaded instead.
    """
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                arrays[name] = np.load(archive.open(info))
                continue
            raw.seek(info.header_offset)
            header = raw.read(30)  # local file header: name and extra-field lengths at 26..30
            raw.seek(info.header_offset + 30 + int.from_bytes(header[26:28], "little")
                     + int.from_bytes(header[28:30], "little"))  # fmt: skip
            version = np.lib.format.read_magic(raw)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(raw)
            if dtype.hasobject or fortran:
                arrays[name] = np.load(archive.open(info), allow_pickle=False)
                continue
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape)
    if arrays["format"].item() not in (b"csr", "csr"):
        raise ValueError(f"{path}: not a CSR shard (format {arrays['format'].item()!r})")
    matrix = sp.csr_matrix(
        (arrays["data"], arrays["indices"], arrays["indptr"]),
        shape=tuple(int(x) for x in arrays["shape"]), copy=False,
    )  # fmt: skip
    return matrix if matrix.dtype == np.float32 else sp.csr_matrix(matrix, dtype=np.float32)
