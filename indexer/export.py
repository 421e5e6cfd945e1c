"""Sparse vectors out of the system: JSONL ``{"id": ..., "vector": {word: weight}}``.

Lines exported from a corpus store also carry each image's ``metadata`` record
(:mod:`indexer.metadata`).

This is the lingua franca of learned-sparse tools: Anserini's JsonVectorCollection, Seismic and
OpenSearch neural sparse all ingest it. Keys are display words (``dog``, ``·dog`` for a
continuation piece; UTF-8) by default, or vocabulary indices (``keys="index"``) for tools that
want plain ASCII tokens. Anserini truncates weights to integers, so pass ``scale`` to write
``round(w * scale)`` impacts (words that round to 0 are left out) and keep the scale alongside.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import scipy.sparse as sp

from model.vocabulary import Vocabulary

Keys = Literal["word", "index"]


def vector_dict(
    row: sp.csr_matrix, vocabulary: Vocabulary, keys: Keys = "word", scale: float | None = None
) -> dict[str, float | int]:
    """One 1 x V row -> {key: weight} (or {key: integer impact} when ``scale`` is given)."""
    names = vocabulary.words if keys == "word" else None
    out: dict[str, float | int] = {}
    if scale is None:
        for i, w in zip(row.indices, row.data, strict=True):
            out[names[i] if names else str(i)] = round(float(w), 6)
    else:
        for i, q in zip(row.indices, np.rint(row.data * scale).astype(np.int64), strict=True):
            if q > 0:
                out[names[i] if names else str(i)] = int(q)
    return out


def write_jsonl(
    out: TextIO,
    batches: Iterable[tuple[Sequence[str], sp.csr_matrix]],
    vocabulary: Vocabulary,
    keys: Keys = "word",
    scale: float | None = None,
    metadata: Callable[[Sequence[str]], dict[str, dict[str, Any]]] | None = None,
) -> int:
    """Write one line per row of each (ids, rows) batch; returns the number of lines.

    ``metadata`` (ids -> {id: record}) adds a ``metadata`` key to each line.
    """
    lines = 0
    for ids, rows in batches:
        rows = sp.csr_matrix(rows)
        if rows.shape[1] != len(vocabulary):
            raise ValueError(f"rows have {rows.shape[1]} columns, vocabulary {len(vocabulary)}")
        records = metadata(ids) if metadata is not None else None
        for n, image_id in enumerate(ids):
            line: dict[str, Any] = {
                "id": image_id,
                "vector": vector_dict(rows[n], vocabulary, keys, scale),
            }
            if records is not None:
                line["metadata"] = records[image_id]
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            lines += 1
    return lines


def export_store_jsonl(
    store_path: str | Path, out_path: str | Path, keys: Keys = "word", scale: float | None = None
) -> int:
    """Every live image of a corpus store -> a JSONL file (written shard by shard)."""
    from indexer.store import CorpusStore

    with CorpusStore.open(store_path) as store, open(out_path, "w", encoding="utf-8") as out:
        return write_jsonl(
            out, store.iter_shards(), store.vocabulary, keys, scale, store.metadata_records
        )
