"""The search-index protocol every engine implements, and the manifest every index carries.

An index maps image ids to sparse rows in vocabulary index space and answers top-k sparse
dot-product queries. Engines differ in how (exact scipy in memory, Lucene impact index), not in
what: the same rows and query must give the same top ids, which the tests check.

Word filters (:class:`indexer.filters.WordFilter`) are part of every search: ``exclude`` drops
images that have any excluded word, ``require`` keeps only images that have all required words,
"has" by the one rule of :mod:`indexer.filters`, with the same meaning in every engine.

Every index carries an :class:`IndexManifest` (``index.json``) naming its engine, the model's
checkpoint id and vocabulary hash, the sparsification threshold, the quantisation scale (for
engines that store integer impacts) and its counts, so the service can refuse an index built
with another vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_write_json, now_iso
from indexer.fields import FieldColumns, Where, WhereError
from indexer.filters import WordFilter
from model.vocabulary import VocabularyMismatchError

MANIFEST = "index.json"
FORMAT_VERSION = 1
Hit = tuple[str, float]


@dataclass
class IndexManifest:
    """What an index was built from and with; saved as ``index.json`` in its directory."""

    engine: str
    vocabulary_hash: str
    vocabulary_size: int
    checkpoint_id: str = ""
    threshold: float | None = None
    quantisation_scale: float | None = None  # None: float weights, no quantisation
    count: int = 0  # live rows
    deleted: int = 0  # rows masked out (still stored)
    params: dict[str, Any] = field(default_factory=dict)  # engine options
    created: str = field(default_factory=now_iso)
    format_version: int = FORMAT_VERSION
    max_words: int | None = None  # the store's word budget per image (None: all words)

    def save(self, directory: Path) -> None:
        atomic_write_json(directory / MANIFEST, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> IndexManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no index at {directory} (missing {MANIFEST})")
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory}: index format version {data.get('format_version')!r}, "
                f"this code reads version {FORMAT_VERSION}; rebuild the index from the store"
            )
        return cls(**data)

    def check_vocabulary(self, vocabulary_hash: str, what: str = "the model") -> None:
        if vocabulary_hash != self.vocabulary_hash:
            raise VocabularyMismatchError(
                f"vocabulary mismatch: the {self.engine} index was built with vocabulary "
                f"{self.vocabulary_hash[:12]} but {what} uses {vocabulary_hash[:12]}; rebuild the "
                "index with this model (`lexvla index build`) or serve the matching checkpoint."
            )


class IndexUnavailable(ConnectionError):
    """The engine's server cannot be used now (down, too slow, or refusing the credentials).

    A ``ConnectionError`` (so an ``OSError``): the service answers 503 with this message, and
    start-up reports it in one line. The message says what failed and what to check.
    """


@runtime_checkable
class SearchIndex(Protocol):
    """Top-k sparse dot-product search over image rows (vocabulary index space).

    Engines subclass it: the members with a body below are defaults an engine overrides where it
    differs, so callers read them directly (``index.exact``, ``index.moved(path)``).
    """

    manifest: IndexManifest
    # the version's metadata columns (indexer.fields): set by a build before it publishes, and
    # by ``open_index`` from the version's ``fields/`` folder; saved by ``publish``
    fields: FieldColumns | None = None

    @property
    def filters_metadata(self) -> bool:
        """True when :meth:`search` applies ``where`` (metadata conditions). Default: False,
        and a search with conditions is refused (:meth:`where_fields`)."""
        return False

    def where_fields(self, where: Where | None) -> FieldColumns | None:
        """The columns to apply ``where`` with, None when there is nothing to apply;
        :class:`~indexer.fields.WhereError` when this index cannot apply it."""
        if where is None or where.empty:
            return None
        if not self.filters_metadata:
            raise WhereError(
                "where",
                f"the {self.manifest.engine} engine does not filter by metadata; rebuild the "
                "index with the compact, memory or qdrant engine (`lexvla index reindex`)",
            )
        if self.fields is None:
            raise WhereError(
                "where",
                "this index version has no metadata columns; rebuild it from the store "
                "(`lexvla index reindex`)",
            )
        return self.fields

    def matching(
        self, query: sp.csr_matrix, filters: WordFilter | None = None, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every image that shares a word with ``query`` and passes ``filters`` and ``where``:
        (its row in :attr:`fields`, its score in the engine's arithmetic), in no order; for
        field orders and facets. Default: :meth:`search` for all of them; engines that can score
        into arrays override it."""
        if self.fields is None:
            raise WhereError("where", "this index version has no metadata columns")
        found = self.search(query, max(1, self.count()), 0, filters, where=where)
        rows = self.fields.positions([i for i, _ in found])
        scores = np.array([s for _, s in found], dtype=np.float64)
        return rows[rows >= 0], scores[rows >= 0]

    def score_error(self, query: sp.csr_matrix) -> float | None:
        """Largest difference between this engine's score and the exact one for ``query``:
        0 for exact engines, None when unknown (the default for inexact ones)."""
        return 0.0 if self.exact else None

    @property
    def exact(self) -> bool:
        """True when top-k and scores are the float32 dot products of the stored rows."""
        return False

    @property
    def exact_rows(self) -> bool:
        """True when :meth:`vectors_of` returns the float32 rows exactly as they were added."""
        return False

    @property
    def ranks_by_rows(self) -> bool:
        """True when top-k order and scores are the dot products of the rows :meth:`vectors_of`
        returns (exact, or quantised but complete), so re-scoring those rows changes nothing."""
        return False

    def moved(self, path: Path) -> None:
        """The version directory this index was saved to was renamed to ``path`` (by
        :func:`~indexer.engines.versions.publish`); an engine serving from the files it saved
        follows them. Default: nothing to follow."""
        return None

    def activate(self) -> str | None:
        """Make this published index the one readers of a shared name search (a server alias);
        returns what was active before. Default: nothing shared, None."""
        return None

    def optimize(self) -> bool:
        """Rewrite what writes left (small segments, deleted rows) into the shape a batch build
        of the live rows has, before the next :meth:`save`; True when anything changed. Default:
        nothing to rewrite (exact rows in memory, or a server that optimises by itself)."""
        return False

    def close(self) -> None:
        """Release what the index holds open (files, connections). Default: nothing."""
        return None

    def add(self, ids: Sequence[str], rows: sp.csr_matrix) -> None:
        """Add rows; an id already live in the index is a ValueError."""
        ...

    def delete(self, ids: Iterable[str]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were live."""
        ...

    def search(
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        """Best ``k`` (id, score) after skipping ``offset``, by score then insertion order,
        among the images that pass ``filters`` and ``where``; only images sharing a word with
        the query (score > 0) are hits."""
        ...

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for each row of ``queries`` (the same filters for all)."""
        ...

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        """Rows of live ids in the given order (KeyError for an unknown id)."""
        ...

    def count(self) -> int:
        """Number of live rows."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the index into ``path`` (a new or empty directory), manifest last."""
        ...

    @classmethod
    def open(cls, path: str | Path) -> Self:
        """Open an index written by :meth:`save`."""
        ...


def as_query_row(query: Any, vocabulary_size: int) -> sp.csr_matrix:
    """A 1 x V float32 CSR from a CSR row, a dense vector, or a {index: weight} mapping."""
    if isinstance(query, dict):
        cols = np.fromiter(query.keys(), dtype=np.int64, count=len(query))
        vals = np.fromiter(query.values(), dtype=np.float32, count=len(query))
        row = sp.csr_matrix((vals, (np.zeros_like(cols), cols)), shape=(1, vocabulary_size))
    elif sp.issparse(query):
        row = sp.csr_matrix(query, dtype=np.float32)
    else:
        row = sp.csr_matrix(np.asarray(query, dtype=np.float32).reshape(1, -1))
    if row.shape != (1, vocabulary_size):
        raise ValueError(f"expected a query of shape (1, {vocabulary_size}), got {row.shape}")
    row.sum_duplicates()
    return row


def check_rows(ids: Sequence[str], rows: sp.csr_matrix, vocabulary_size: int) -> sp.csr_matrix:
    """Validate rows to add: one per id, V columns, non-negative; returns float32 CSR."""
    rows = sp.csr_matrix(rows, dtype=np.float32)
    if rows.shape != (len(ids), vocabulary_size):
        raise ValueError(
            f"expected rows of shape ({len(ids)}, {vocabulary_size}), got {rows.shape}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("ids to add must be distinct")
    if rows.nnz and float(rows.data.min()) < 0:
        raise ValueError("lexical vectors are non-negative; got negative weights")
    return rows


def top_k(
    scores: np.ndarray, rows: np.ndarray, k: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` after ``offset`` of (scores, rows), by score desc then row asc."""
    need = k + offset
    if len(scores) > need:
        # the need-th best score; keep everything >= it so that ties are broken by row below
        kth = np.partition(scores, len(scores) - need)[len(scores) - need]
        keep = scores >= kth
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))[offset:need]
    return scores[order], rows[order]


CSR_PARTS = ("data", "indices", "indptr")


def save_csr(directory: Path, name: str, matrix: sp.csr_matrix) -> None:
    """Write ``matrix`` as ``{name}_{data,indices,indptr}.npy`` (memory-mappable on open)."""
    for part in CSR_PARTS:
        np.save(directory / f"{name}_{part}.npy", getattr(matrix, part))


def load_csr(directory: Path, name: str, shape: tuple[int, int], mmap: bool) -> sp.csr_matrix:
    """Read what :func:`save_csr` wrote; with ``mmap`` the arrays stay in the page cache."""
    mode: Literal["r"] | None = "r" if mmap else None
    parts = tuple(np.load(directory / f"{name}_{p}.npy", mmap_mode=mode) for p in CSR_PARTS)
    return sp.csr_matrix(parts, shape=shape, copy=False)


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder of immutable index files by hard links where possible (else copies).

    Engines whose files are never rewritten once written (Lucene segments, compact blocks) share
    them between index versions this way: a new version costs only the files that changed.
    """
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.name == "write.lock":
            continue
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)
