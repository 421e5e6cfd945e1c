"""LexVLA rows as Qdrant points and back: point ids, sparse vectors, payloads, query vectors.

The point layout (one point per image; its id a ``uuid5`` of the image id; the sparse vector
``lex``; a payload with the image ``id``, its strong ``words``, the caller's extra keys and
the image's metadata record under ``meta``) is described in
:mod:`indexer.engines.qdrant.index`. The back ends (:mod:`indexer.engines.qdrant.backends`) take and
return the plain Python types built here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from indexer.engines.qdrant.backends import ID, WORDS, Sparse
from indexer.engines.qdrant.conditions import META
from indexer.filters import strong_words

_NAMESPACE = uuid.UUID("7b1f3c52-6a0e-4f57-9d3c-1e5a2b8c4d60")  # fixed: point ids never move


def point_id(image_id: str) -> str:
    """The point id of an image: stable across runs, machines and processes."""
    return str(uuid.uuid5(_NAMESPACE, image_id))


def points(
    ids: Sequence[str],
    rows: sp.csr_matrix,
    metadata: Sequence[dict[str, Any]] | None,
    batch: range,
    meta: Sequence[dict[str, Any] | None] | None = None,
) -> tuple[list[str], list[Sparse], list[dict[str, Any]]]:
    """Point ids, sparse vectors and payloads of the rows numbered ``batch`` (indices sorted);
    ``meta``: each image's ``meta`` payload (:func:`~indexer.engines.qdrant.conditions.meta_payload`,
    None: the image has no metadata record)."""
    vectors, payloads = [], []
    for n in batch:
        a, b = rows.indptr[n], rows.indptr[n + 1]
        indices, data = rows.indices[a:b], rows.data[a:b]
        vectors.append((indices.tolist(), data.tolist()))
        extra = dict(metadata[n]) if metadata is not None else {}
        payload = {**extra, ID: ids[n], WORDS: strong_words(indices, data).tolist()}
        if meta is not None and meta[n] is not None:
            payload[META] = meta[n]
        payloads.append(payload)
    return [point_id(ids[n]) for n in batch], vectors, payloads


def query_vectors(queries: sp.csr_matrix) -> tuple[list[Sparse], list[int]]:
    """The positive entries of each query row as a sparse vector, and the numbers of the rows
    that have any (a query without one matches nothing and is not sent)."""
    sparse, which = [], []
    for n in range(queries.shape[0]):
        a, b = queries.indptr[n], queries.indptr[n + 1]
        keep = queries.data[a:b] > 0
        if keep.any():
            sparse.append((queries.indices[a:b][keep].tolist(), queries.data[a:b][keep].tolist()))
            which.append(n)
    return sparse, which


def rows_of(
    ids: Sequence[str], pids: Sequence[str], found: dict[str, Sparse], vocabulary_size: int
) -> sp.csr_matrix:
    """The rows of ``ids`` (point ids ``pids``) in that order, from the vectors a back end
    ``found``, word ids sorted; a KeyError names an image that is not among them."""
    indptr, indices, data = [0], [], []
    for image_id, pid in zip(ids, pids, strict=True):
        if pid not in found:
            raise KeyError(f"image {image_id!r} is not in the index")
        cols, vals = found[pid]
        order = np.argsort(cols, kind="stable")
        indices.append(np.asarray(cols, dtype=np.int32)[order])
        data.append(np.asarray(vals, dtype=np.float32)[order])
        indptr.append(indptr[-1] + len(cols))
    if not ids:
        return sp.csr_matrix((0, vocabulary_size), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr), shape=(len(ids), vocabulary_size)
    )
