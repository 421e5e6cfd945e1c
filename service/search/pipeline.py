"""What the routes call: query vector -> search -> hits with contributions; explain; heat maps.

Threads. The event loop never runs model or index code. The model has one worker thread (query
micro-batches, uploaded images and patch vectors take turns on it); index searches and re-scoring
run on a small pool of their own, so searches proceed while the model encodes the next batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import scipy.sparse as sp

from indexer.store import CorpusStore
from service.api.schemas import (
    EncodeRequest,
    EncodeResponse,
    ExplainRequest,
    ExplainResponse,
    ExplainTimings,
    HeatMap,
    MatchedWord,
    SearchHit,
    SearchMode,
    SearchRequest,
    SearchResponse,
    SearchTimings,
    WordWeight,
)
from service.core.config import Settings
from service.core.errors import InvalidInput
from service.core.lru import LRUCache
from service.core.metrics import Metrics
from service.search import heatmap, scoring
from service.search.batcher import MicroBatcher
from service.search.images import decode_upload
from service.search.indexes import IndexHandle
from service.search.patches import PatchGrid, PatchMaps
from service.search.query import (
    apply_edits,
    resolve_edits,
    split_exclusions,
    top_words,
    word_index,
    words_vector,
)


def image_url(image_id: str) -> str:
    return f"/images/{quote(image_id, safe='')}"


def thumbnail_url(image_id: str) -> str:
    return f"/thumbnails/{quote(image_id, safe='')}"


def heatmap_url(image_id: str, word: str) -> str:
    return f"/explain/{quote(image_id, safe='')}/heatmap.png?word={quote(word, safe='')}"


@dataclass
class QueryVector:
    row: sp.csr_matrix
    text: str  # the text that was encoded (inline exclusions removed)
    excluded: list[str]
    encode_ms: float


def encode_texts_sparse(model: Any, texts: list[str]) -> list[sp.csr_matrix]:
    """Model thread: a micro-batch of texts -> one sparse row each."""
    rows = model.sparsify(model.encode_texts(texts))
    return [rows[i] for i in range(rows.shape[0])]


class SearchPipeline:
    def __init__(
        self,
        model: Any,
        store: CorpusStore | None,
        settings: Settings,
        metrics: Metrics,
        model_executor: Executor,
        search_executor: Executor,
    ):
        self.model = model
        self.vocabulary = model.vocabulary
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.model_executor = model_executor
        self.search_executor = search_executor
        self.batcher: MicroBatcher[sp.csr_matrix] = MicroBatcher(
            lambda texts: encode_texts_sparse(model, texts),
            model_executor,
            max_batch=settings.batch_size,
            max_wait_ms=settings.batch_wait_ms,
            cache_size=settings.query_cache_size,
            metrics=metrics,
        )
        self.words_cache: LRUCache[sp.csr_matrix] = LRUCache(settings.query_cache_size)
        self.patches = PatchMaps(
            model,
            store,
            model_executor,
            metrics,
            settings.patch_cache_size,
            settings.max_image_pixels,
        )

    # --- query vectors ------------------------------------------------------------------------
    async def query_vector(
        self, text: str, mode: str, exclude: list[str], boost: dict[str, float]
    ) -> QueryVector:
        self._check_length(text, "query")
        clean, inline = split_exclusions(text)
        if not clean:
            raise InvalidInput(
                "the query has only exclusions ('-word'): add a word to search for",
                loc=["body", "query"],
            )
        edits = resolve_edits(self.vocabulary, exclude, boost, inline)  # 422 before any encoding
        with self.metrics.stage("encode") as timer:
            base = await self.encode_text(clean, mode)
        row = apply_edits(base, edits)
        return QueryVector(row, clean, [*exclude, *inline], timer.ms)

    async def encode_text(self, text: str, mode: str) -> sp.csr_matrix:
        if mode == "model":
            return await self.batcher.encode(text)
        cached = self.words_cache.get(text)
        self.metrics.cache_lookup("words", cached is not None)
        if cached is None:
            cached = words_vector(text, self.model.text.tokenizer, self.vocabulary)
            self.words_cache.put(text, cached)
        return cached

    async def search_image(
        self,
        handle: IndexHandle,
        data: bytes,
        filename: str,
        exclude: list[str],
        *,
        top_k: int,
        offset: int,
        min_score: float,
        matched_limit: int | None,
    ) -> SearchResponse:
        """An uploaded image's lexical vector as the query."""
        start = time.perf_counter()
        self.check_paging(top_k, offset, "body")
        edits = resolve_edits(self.vocabulary, exclude)
        size = int(self.model.config.image.image_size)
        image = await asyncio.to_thread(decode_upload, data, self.settings.max_image_pixels, size)
        loop = asyncio.get_running_loop()
        with self.metrics.stage("encode") as timer:
            row = await loop.run_in_executor(
                self.model_executor, lambda: self.model.sparsify(self.model.encode_pil([image]))
            )
        return await self.run_search(
            handle,
            apply_edits(row, edits),
            filename,
            "image",
            exclude,
            timer.ms,
            start,
            top_k=top_k,
            offset=offset,
            min_score=min_score,
            matched_limit=matched_limit,
        )

    def _check_length(self, text: str, field: str) -> None:
        limit = self.settings.max_query_chars
        if len(text) > limit:
            raise InvalidInput(
                f"the {field} is {len(text):,} characters long; the limit is {limit:,} "
                "(LEXVLA_MAX_QUERY_CHARS)",
                loc=["body", field],
            )

    def check_paging(self, top_k: int, offset: int, where: str = "body") -> None:
        s = self.settings
        if top_k > s.max_top_k:
            raise InvalidInput(
                f"top_k={top_k} is above this server's limit of {s.max_top_k} (LEXVLA_MAX_TOP_K)",
                loc=[where, "top_k"],
            )
        if offset > s.max_offset:
            raise InvalidInput(
                f"offset={offset} is above this server's limit of {s.max_offset} "
                "(LEXVLA_MAX_OFFSET)",
                loc=[where, "offset"],
            )

    # --- search -------------------------------------------------------------------------------
    async def search(self, req: SearchRequest, handle: IndexHandle) -> SearchResponse:
        start = time.perf_counter()
        self.check_paging(req.top_k, req.offset)
        q = await self.query_vector(req.query, req.mode, req.exclude, req.boost)
        return await self.run_search(
            handle,
            q.row,
            q.text,
            req.mode,
            q.excluded,
            q.encode_ms,
            start,
            top_k=req.top_k,
            offset=req.offset,
            min_score=req.min_score,
            matched_limit=req.matched_limit,
            query_words_limit=req.query_words_limit,
        )

    async def run_search(
        self,
        handle: IndexHandle,
        row: sp.csr_matrix,
        text: str,
        mode: SearchMode,
        excluded: list[str],
        encode_ms: float,
        start: float,
        *,
        top_k: int,
        offset: int,
        min_score: float,
        matched_limit: int | None,
        query_words_limit: int | None = 100,
    ) -> SearchResponse:
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            self.search_executor,
            lambda: scoring.search(
                handle,
                self.store,
                self.vocabulary,
                row,
                top_k=top_k,
                offset=offset,
                min_score=min_score,
                matched_limit=matched_limit,
                rescore_factor=self.settings.rescore_factor,
            ),
        )
        self.metrics.stage_seconds.labels("search").observe(outcome.search_ms / 1e3)
        self.metrics.stage_seconds.labels("rescore").observe(outcome.rescore_ms / 1e3)
        hits = [
            SearchHit(
                rank=offset + n + 1,
                id=h.id,
                score=h.score,
                image_url=image_url(h.id),
                thumbnail_url=thumbnail_url(h.id),
                matched=[_matched(c) for c in h.matched],
                other_matched_words=h.other_words,
                other_contribution=h.other_contribution,
            )
            for n, h in enumerate(outcome.hits)
        ]
        timings = SearchTimings(
            encode_ms=encode_ms,
            search_ms=outcome.search_ms,
            rescore_ms=outcome.rescore_ms,
            total_ms=(time.perf_counter() - start) * 1e3,
        )
        return SearchResponse(
            query=text,
            mode=mode,
            excluded=excluded,
            active_words=row.nnz,
            query_words=_weights(top_words(row, self.vocabulary, query_words_limit)),
            index_version=handle.version,
            top_k=top_k,
            offset=offset,
            hits=hits,
            timings=timings,
            notes=outcome.notes,
        )

    # --- explain ------------------------------------------------------------------------------
    async def explain(self, req: ExplainRequest, handle: IndexHandle) -> ExplainResponse:
        start = time.perf_counter()
        image_row = scoring.image_row(handle, self.store, req.image_id)  # 404 before encoding
        q = await self.query_vector(req.query, req.mode, req.exclude, req.boost)
        with self.metrics.stage("explain") as timer:
            hit = scoring.explain_row(q.row, image_row, self.vocabulary)
            notes: list[str] = []
            maps: list[HeatMap] = []
            source = None
            patches_ms = 0.0
            if req.heatmaps and hit.matched:
                try:
                    grid = await self.patches.get(req.image_id)
                except Exception as exc:  # the explanation stands without heat maps
                    notes.append(f"no heat maps: {getattr(exc, 'detail', exc)}")
                else:
                    source, patches_ms = grid.source, grid.ms
                    maps = [_heatmap(req.image_id, c, grid) for c in hit.matched[: req.heatmaps]]
                    if source == "thumbnail":
                        notes.append("the original image is unavailable: maps use its thumbnail")
        grid_size = int(self.model.image.grid_size)
        return ExplainResponse(
            image_id=req.image_id,
            query=q.text,
            mode=req.mode,
            score=hit.score,
            matched=[_matched(c) for c in hit.matched],
            image_words=_weights(top_words(image_row, self.vocabulary, req.top_words)),
            query_words=_weights(top_words(q.row, self.vocabulary, req.top_words)),
            grid_size=grid_size,
            heatmaps=maps,
            patches_from=source,  # type: ignore[arg-type]
            image_url=image_url(req.image_id),
            thumbnail_url=thumbnail_url(req.image_id),
            index_version=handle.version,
            notes=notes,
            timings=ExplainTimings(
                encode_ms=q.encode_ms,
                explain_ms=timer.ms,
                patches_ms=patches_ms,
                total_ms=(time.perf_counter() - start) * 1e3,
            ),
        )

    async def heatmap_png(self, image_id: str, word: str, size: int, handle: IndexHandle) -> bytes:
        index = word_index(self.vocabulary, word, "word", ("query", "word"))
        scoring.image_row(handle, self.store, image_id, loc=("path", "image_id"))
        grid = await self.patches.get(image_id)
        with self.metrics.stage("heatmap"):
            image_size = int(self.model.config.image.image_size)
            drawn = await asyncio.to_thread(
                lambda: heatmap.png_bytes(
                    heatmap.overlay(grid.image, grid.word(index), image_size, size)
                )
            )
        return drawn

    # --- encode -------------------------------------------------------------------------------
    async def encode(self, req: EncodeRequest) -> EncodeResponse:
        self._check_length(req.text, "text")
        with self.metrics.stage("encode"):
            row = await self.encode_text(req.text.strip(), req.mode)
        words = top_words(row, self.vocabulary)
        return EncodeResponse(
            text=req.text, mode=req.mode, vector=dict(words), active_words=len(words)
        )


def _weights(pairs: list[tuple[str, float]]) -> list[WordWeight]:
    return [WordWeight(word=w, weight=v) for w, v in pairs]


def _matched(c: scoring.Contribution) -> MatchedWord:
    return MatchedWord(
        word=c.word,
        query_weight=c.query_weight,
        image_weight=c.image_weight,
        contribution=c.contribution,
    )


def _heatmap(image_id: str, c: scoring.Contribution, grid: PatchGrid) -> HeatMap:
    values = grid.word(c.index).astype(np.float64)
    return HeatMap(
        word=c.word,
        contribution=c.contribution,
        min=float(values.min()),
        max=float(values.max()),
        values=np.round(values, 6).tolist(),
        url=heatmap_url(image_id, c.word),
    )
