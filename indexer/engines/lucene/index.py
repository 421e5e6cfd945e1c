"""Lucene impact-index engine: Anserini through pyjnius, the design card's inverted index.

Lucene stores integer term frequencies, so weights are quantised: a weight ``w`` becomes the
impact ``round(w * scale)`` and the document is indexed as that many repetitions of the word's
token (Anserini's ``-impact -pretokenized`` convention, scored by its ImpactSimilarity: score =
sum over query words of query impact x document impact). Query weights are quantised the same
way (Anserini's impact searcher takes integer query weights). The default scale, 100, keeps every
weight above 0.005, so nothing at LexVLA's threshold 1/sqrt(V) (0.0076) vanishes; weights below
``0.5 / scale`` do. Tokens are vocabulary indices written as zero-padded decimals (``00042``):
plain ASCII that Lucene's whitespace analyzer keeps intact, unlike display words such as
``·dog``.

Lucene picks the candidates; with ``rescore`` (default) Lucene's best ``max(k + offset,
candidates)`` hits (``candidates`` = 50 by default) are re-scored exactly from the float rows kept
beside the Lucene files and re-sorted, so scores equal the memory engine's, the per-word
explanations add up, and quantisation can only matter for images outside Lucene's top 50. Word filters: which rows pass is computed from the float rows (:mod:`indexer.filters`, the
strong-word matrix cached per index). When few rows pass (at most ``_FILTER_EXACT``), they are
scored exactly from the float rows, which is cheaper than any query; otherwise Lucene's hits are
filtered and the search is repeated four times deeper until the page is full or Lucene runs out
(Anserini's impact searcher takes no filter argument). Deletions are real Lucene deletions
(``IndexWriter.deleteDocuments`` on the id field); Lucene skips deleted documents and merges
them away later.

On disk (one version directory): ``index.json``, ``lucene/`` (the Lucene index), ``ids.json`` and
``rows_{data,indices,indptr}.npy`` (float rows, row order of ``ids.json``, deleted ones dropped).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_write_json
from indexer.engines.base import (
    Hit,
    IndexManifest,
    SearchIndex,
    as_query_row,
    check_rows,
    link_tree,
    load_csr,
    save_csr,
)
from indexer.engines.lucene import DEFAULT_SCALE
from indexer.engines.lucene.jvm import java_class
from indexer.fields import Where
from indexer.filters import WordFilter, active, allowed_by_has, has_matrix

ENGINE = "lucene"

_BATCH = 2000  # documents per call into Java
_FILTER_EXACT = 20_000  # filtered searches allowing at most this many rows score them directly


def token_width(vocabulary_size: int) -> int:
    return max(5, len(str(vocabulary_size - 1)))


class LuceneIndex(SearchIndex):
    """Anserini impact index + float row store; same protocol as the memory engine."""

    def __init__(
        self, manifest: IndexManifest, lucene_dir: Path | None, rows: sp.csr_matrix, ids: list[str]
    ):
        """Use :meth:`create` or :meth:`open`; ``lucene_dir`` None means "make a new one"."""
        self.manifest = manifest
        self.scale = float(manifest.quantisation_scale or DEFAULT_SCALE)
        self.rescore = bool(manifest.params.get("rescore", True))
        self.candidates = int(manifest.params.get("candidates", 50))
        self.threads = int(manifest.params.get("threads", 2))
        self._lucene_dir = lucene_dir or Path(tempfile.gettempdir()) / "lexvla-lucene-unset"
        self._owned: tempfile.TemporaryDirectory[str] | None = None
        self._parts, self._ids = [rows], ids
        self._row_of = {i: n for n, i in enumerate(ids)}
        self._live = np.ones(len(ids), dtype=bool)
        self._searcher: Any = None
        self._has: sp.csc_matrix | None = None  # strong words (images x words), for filters
        width = token_width(manifest.vocabulary_size)
        self._tokens = np.array(
            [list(f"{i:0{width}d} ".encode()) for i in range(manifest.vocabulary_size)],
            dtype=np.uint8,
        )

    @classmethod
    def create(
        cls,
        vocabulary_size: int,
        vocabulary_hash: str = "",
        checkpoint_id: str = "",
        threshold: float | None = None,
        scale: float = DEFAULT_SCALE,
        rescore: bool = True,
        candidates: int = 50,
        threads: int = 2,
    ) -> LuceneIndex:
        manifest = IndexManifest(
            ENGINE, vocabulary_hash, vocabulary_size, checkpoint_id, threshold, float(scale),
            params={"rescore": rescore, "candidates": candidates, "threads": threads, "token_width": token_width(vocabulary_size)},
        )  # fmt: skip
        empty = sp.csr_matrix((0, vocabulary_size), dtype=np.float32)
        index = cls(manifest, None, empty, [])
        index._own_copy(None)
        return index

    # --- writing ------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], rows: sp.csr_matrix) -> None:
        ids = [str(i) for i in ids]
        rows = check_rows(ids, rows, self.manifest.vocabulary_size)
        for i in ids:
            row = self._row_of.get(i)
            if row is not None and self._live[row]:
                raise ValueError(f"image {i!r} is already in the index")
        self._writable()
        indexer = self._indexer(append=True)
        try:
            for start in range(0, len(ids), _BATCH):
                docs = [
                    self._document(i, rows[n])
                    for n, i in enumerate(ids[start : start + _BATCH], start)
                ]
                indexer.addRawDocuments(docs)
        finally:
            indexer.close()
        start = len(self._ids)
        self._parts.append(rows)
        self._ids = self._ids + ids
        self._row_of.update({i: start + n for n, i in enumerate(ids)})
        self._live = np.concatenate([self._live, np.ones(len(ids), dtype=bool)])
        self._searcher = None
        self._has = None

    def delete(self, ids: Iterable[str]) -> int:
        gone = [str(i) for i in ids if str(i) in self._row_of and self._live[self._row_of[str(i)]]]
        if not gone:
            return 0
        self._writable()
        writer = self._writer()
        term = java_class("org.apache.lucene.index.Term")
        term_query = java_class("org.apache.lucene.search.TermQuery")
        try:
            for i in gone:  # (pyjnius resolves the varargs overload to Query[], not Term[])
                writer.deleteDocuments(term_query(term("id", i)))
            writer.commit()
        finally:
            writer.close()
        for i in gone:
            self._live[self._row_of[i]] = False
        self._searcher = None
        return len(gone)

    # --- reading ------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self._live.sum())

    def search(
        self,
        query: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[Hit]:
        row = as_query_row(query, self.manifest.vocabulary_size)
        return self.search_batch(row, k, offset, filters, where=where)[0]

    def search_batch(
        self,
        queries: sp.csr_matrix,
        k: int = 10,
        offset: int = 0,
        filters: WordFilter | None = None,
        *,
        where: Where | None = None,
    ) -> list[list[Hit]]:
        self.where_fields(where)  # refused: this engine does not filter by metadata
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be positive and offset non-negative, got {k}, {offset}")
        queries = sp.csr_matrix(queries, dtype=np.float32)
        if self.count() == 0:
            return [[] for _ in range(queries.shape[0])]
        if active(filters):
            assert filters is not None
            allowed = self._allowed(filters)
            return [self._filtered(queries[n], k, offset, allowed) for n in range(queries.shape[0])]
        depth = max(k + offset, self.candidates) if self.rescore else k + offset
        raw = self._lucene(queries, depth)
        return [self._hits(hits, queries[n], k, offset) for n, hits in enumerate(raw)]

    def _lucene(self, queries: sp.csr_matrix, depth: int) -> list[Any]:
        """Lucene's best ``depth`` raw hits for each query row."""
        searcher = self._open_searcher()
        maps = [self._query_map(queries[n]) for n in range(queries.shape[0])]
        if len(maps) == 1:
            raw = [searcher.search(maps[0], depth)]
        else:
            java_maps, qids = (
                java_class("java.util.ArrayList")(),
                java_class("java.util.ArrayList")(),
            )
            for n, query_map in enumerate(maps):
                java_maps.add(query_map)
                qids.add(str(n))
            found = searcher.batch_search(java_maps, qids, depth, self.threads)
            raw = [found.get(str(n)) for n in range(len(maps))]
        return raw

    def _allowed(self, filters: WordFilter) -> np.ndarray:
        """Live rows that pass ``filters``."""
        filters.check(self.manifest.vocabulary_size)
        if self._has is None or self._has.shape[0] != len(self._ids):
            self._has = has_matrix(self._rows).tocsc()
        return allowed_by_has(filters, self._has) & self._live

    def _filtered(
        self, query: sp.csr_matrix, k: int, offset: int, allowed: np.ndarray
    ) -> list[Hit]:
        rows = np.flatnonzero(allowed)
        if len(rows) <= _FILTER_EXACT:  # few images pass: score them directly, exactly
            scores = np.asarray(self._rows[rows] @ query.T.toarray()).ravel()
            order = [n for n in np.lexsort((rows, -scores)) if scores[n] > 0][offset : offset + k]
            return [(self._ids[rows[n]], float(scores[n])) for n in order]
        depth = max(k + offset, self.candidates)
        while True:
            raw = self._lucene(query, depth)[0]
            found = [h for h in (raw or []) if allowed[self._row_of.get(str(h.docid), 0)]]
            if len(found) >= k + offset or len(raw or []) < depth or depth >= len(self._ids):
                return self._hits(found, query, k, offset)
            depth *= 4

    def vectors_of(self, ids: Sequence[str]) -> sp.csr_matrix:
        rows = []
        for i in ids:
            row = self._row_of.get(str(i))
            if row is None or not self._live[row]:
                raise KeyError(f"image {i!r} is not in the index")
            rows.append(row)
        return self._rows[np.array(rows, dtype=np.int64)]

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        writer = self._writer() if not self._live.all() else None
        if writer is not None:  # merge deletions away so the saved index holds none
            writer.forceMergeDeletes()
            writer.commit()
            writer.close()
        link_tree(self._lucene_dir, path / "lucene")
        live = np.flatnonzero(self._live)
        rows = self._rows[live] if len(live) < len(self._ids) else self._rows
        save_csr(path, "rows", rows)
        atomic_write_json(path / "ids.json", [self._ids[r] for r in live])
        self.manifest.count, self.manifest.deleted = len(live), 0
        self.manifest.save(path)

    @classmethod
    def open(cls, path: str | Path, mmap: bool = True) -> Self:
        path = Path(path)
        manifest = IndexManifest.load(path)
        if manifest.engine != ENGINE:
            raise ValueError(f"{path} holds a {manifest.engine!r} index, not a {ENGINE!r} one")
        ids = json.loads((path / "ids.json").read_text())
        rows = load_csr(path, "rows", (len(ids), manifest.vocabulary_size), mmap)
        return cls(manifest, path / "lucene", rows, ids)

    # --- internals ----------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return False  # quantised impacts pick the candidates

    @property
    def exact_rows(self) -> bool:
        return True  # the float rows are kept beside the Lucene files

    @property
    def ranks_by_rows(self) -> bool:
        return False  # it ranks by its quantised impacts, not by those rows

    @property
    def _rows(self) -> sp.csr_matrix:
        parts = [p for p in self._parts if p.shape[0]] or self._parts[:1]
        if len(parts) > 1:
            parts = [sp.vstack(parts, format="csr", dtype=np.float32)]
        self._parts = parts  # one bulk add is kept as given, without a copy
        return parts[0]

    def _document(self, image_id: str, row: sp.csr_matrix) -> str:
        impacts = np.rint(row.data * self.scale).astype(np.int64)
        tokens = self._tokens[np.repeat(row.indices, np.maximum(impacts, 0))].tobytes().decode()
        return json.dumps({"id": image_id, "contents": tokens})

    def _query_map(self, query: sp.csr_matrix) -> Any:
        hashmap, integer = java_class("java.util.HashMap"), java_class("java.lang.Integer")
        out = hashmap()
        width = token_width(self.manifest.vocabulary_size)
        for word, impact in zip(
            query.indices, np.rint(query.data * self.scale).astype(np.int64), strict=True
        ):
            if impact > 0:
                out.put(f"{word:0{width}d}", integer(int(impact)))
        return out

    def _hits(self, raw: Any, query: sp.csr_matrix, k: int, offset: int) -> list[Hit]:
        found = [(str(h.docid), float(h.score)) for h in (raw or [])]
        found = [(i, s) for i, s in found if i in self._row_of and self._live[self._row_of[i]]]
        if self.rescore and found:
            rows = self._rows[np.array([self._row_of[i] for i, _ in found])]
            exact = np.asarray(rows @ query.T.toarray()).ravel()
            order = sorted(range(len(found)), key=lambda n: (-exact[n], self._row_of[found[n][0]]))
            found = [(found[n][0], float(exact[n])) for n in order]
        else:
            found = [(i, s / self.scale**2) for i, s in found]
        return found[offset : offset + k]

    def _open_searcher(self) -> Any:
        if self._searcher is None:
            self._searcher = java_class("io.anserini.search.SimpleImpactSearcher")(
                str(self._lucene_dir)
            )
        return self._searcher

    def _indexer(self, append: bool) -> Any:
        args = java_class("io.anserini.index.IndexCollection$Args")()
        args.index, args.input = str(self._lucene_dir), str(self._lucene_dir)
        args.collectionClass = "JsonCollection"
        args.impact, args.pretokenized, args.append = True, True, append
        args.threads = self.threads
        return java_class("io.anserini.index.SimpleIndexer")(args)

    def _writer(self) -> Any:
        directory = java_class("org.apache.lucene.store.FSDirectory").open(
            java_class("java.io.File")(str(self._lucene_dir)).toPath()
        )
        config = java_class("org.apache.lucene.index.IndexWriterConfig")(
            java_class("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
        )
        config.setOpenMode(java_class("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
        return java_class("org.apache.lucene.index.IndexWriter")(directory, config)

    def _writable(self) -> None:
        """Copy-on-write: an index opened from a published version is never modified in place."""
        if self._owned is None:
            self._own_copy(self._lucene_dir)

    def _own_copy(self, source: Path | None) -> None:
        self._owned = tempfile.TemporaryDirectory(prefix="lexvla-lucene-")
        target = Path(self._owned.name) / "lucene"
        if source is not None:
            link_tree(source, target)
        self._lucene_dir = target
        if source is None:
            target.mkdir()
            self._indexer(append=False).close()  # an empty, committed index
        self._searcher = None
        if isinstance(self._rows.data, np.memmap):
            self._parts = [sp.csr_matrix(self._rows, copy=True)]
