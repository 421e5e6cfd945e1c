"""A toy engine that lives only in the tests: brute-force scipy search over float rows.

Everything an engine needs is here (its index, its options, its hooks); registering it is the
one line ``register(ToyEngine())``, after which jobs, ``lexvla index`` and the service build,
publish, open and search it like the engines that ship with lexvla.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from common.atomic import atomic_write_json
from indexer import filters as wf
from indexer.engines.base import (
    Hit,
    IndexManifest,
    SearchIndex,
    as_query_row,
    check_rows,
    load_csr,
    save_csr,
    top_k,
)
from indexer.engines.engine import BuildHints, Engine, EngineOptions
from indexer.fields import Where

NAME = "toy"


class ToyIndex(SearchIndex):
    """Rows in one CSR matrix; optionally rounded to ``decimals`` when added."""

    def __init__(self, manifest: IndexManifest, ids: list[str], rows: sp.csr_matrix):
        self.manifest = manifest
        self.ids = ids
        self.rows = rows
        self.decimals: int | None = manifest.params.get("decimals")
        self.mapped = False  # opened with the open option mmap

    @property
    def exact(self) -> bool:
        return self.decimals is None

    @property
    def exact_rows(self) -> bool:
        return self.decimals is None

    @property
    def ranks_by_rows(self) -> bool:
        return True

    @classmethod
    def create(cls, manifest: IndexManifest) -> ToyIndex:
        empty = sp.csr_matrix((0, manifest.vocabulary_size), dtype=np.float32)
        return cls(manifest, [], empty)

    def add(self, ids: Sequence[str], rows: sp.csr_matrix) -> None:
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        if clash := set(ids) & set(self.ids):
            raise ValueError(f"image {sorted(clash)[0]!r} is already in the index")
        if self.decimals is not None:
            rows.data = np.round(rows.data, self.decimals)
        self.ids += ids
        self.rows = sp.vstack([self.rows, rows], format="csr")

    def delete(self, ids: Iterable[str]) -> int:
        gone = set(ids)
        keep = [n for n, i in enumerate(self.ids) if i not in gone]
        removed = len(self.ids) - len(keep)
        self.ids, self.rows = [self.ids[n] for n in keep], self.rows[keep]
        return removed

    def count(self) -> int:
        return len(self.ids)

    def search(
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        return self.search_batch(query, k, offset, filters, where=where)[0]

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: wf.WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        self.where_fields(where)  # refused: this engine does not filter by metadata
        allowed = wf.allowed_rows(filters, self.rows)
        found = []
        for n in range(queries.shape[0]):
            q = as_query_row(queries[n], self.manifest.vocabulary_size)
            scores = np.asarray((self.rows @ q.T).todense(), dtype=np.float32).ravel()
            rows = np.flatnonzero(allowed & (scores > 0))
            best, order = top_k(scores[rows], rows, k, offset)
            found.append([(self.ids[r], float(s)) for s, r in zip(best, order, strict=True)])
        return found

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        where = {i: n for n, i in enumerate(self.ids)}
        return self.rows[[where[i] for i in ids]]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_csr(path, "rows", self.rows)
        atomic_write_json(path / "ids.json", self.ids)
        self.manifest.count = len(self.ids)
        self.manifest.save(path)

    @classmethod
    def open(cls, path: str | Path, mmap: bool = False) -> Self:
        path = Path(path)
        manifest = IndexManifest.load(path)
        ids = json.loads((path / "ids.json").read_text())
        rows = load_csr(path, "rows", (len(ids), manifest.vocabulary_size), mmap)
        index = cls(manifest, ids, rows)
        index.mapped = mmap
        return index


class ToyBuildOptions(EngineOptions):
    decimals: int | None = Field(default=None, ge=0, description="round weights (None: exact)")


class ToyOpenOptions(EngineOptions):
    mmap: bool = Field(default=False, description="memory-map the rows")


class ToyEngine(Engine):
    name = NAME
    summary = "brute-force scipy search (a test engine)"
    build_options = ToyBuildOptions
    open_options = ToyOpenOptions

    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: ToyBuildOptions,
        hints: BuildHints,
    ) -> SearchIndex:
        params = {"decimals": options.decimals, "expected_rows": hints.expected_rows}
        manifest = IndexManifest(
            NAME, vocabulary_hash, vocabulary_size, checkpoint_id, threshold, params=params
        )
        return ToyIndex.create(manifest)

    def open(self, version: Path, options: ToyOpenOptions) -> SearchIndex:
        return ToyIndex.open(version, options.mmap)
