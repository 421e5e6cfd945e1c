"""What the search routes call: query vector -> index top-k -> hits with per-word contributions.

Threads. The event loop never runs model or index code. The model has one worker thread (query
micro-batches, uploaded images and patch vectors take turns on it); index searches and re-scoring
run on a small pool of their own, so searches proceed while the model encodes the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import scipy.sparse as sp

from indexer.filters import STRONG_FRACTION, STRONG_TOP, WordFilter
from indexer.scoring import RELEVANCE, Arrangement
from indexer.store import CorpusStore
from model import bag_of_words_row
from model.protocols import LexicalModel
from model.query_table import MissingQueryTable, require_table
from service.core.config import Settings
from service.core.errors import InvalidInput
from service.core.keys import OPEN, Access
from service.core.lru import LRUCache
from service.core.metrics import Metrics
from service.schemas import (
    AppliedFilters,
    EncodeRequest,
    EncodeResponse,
    MatchedWord,
    SearchHit,
    SearchMode,
    SearchRequest,
    SearchResponse,
    SearchTimings,
    WordWeight,
)
from service.search import binding, scope, served
from service.search.batcher import MicroBatcher
from service.search.images import decode_upload
from service.search.indexes import IndexHandle
from service.search.patches import PatchMaps
from service.search.query import (
    apply_edits,
    resolve_edits,
    split_filters,
    top_words,
)
from service.search.urls import image_url, thumbnail_url

RULE_TEXT = (
    f"an image has a word when it is among its {STRONG_TOP} heaviest words and weighs at least "
    f"{STRONG_FRACTION:g} x its heaviest word"
)


@dataclass
class QueryVector:
    row: sp.csr_matrix
    text: str  # the text that was encoded (inline filters removed), or the upload's name
    excluded: list[str]
    encode_ms: float
    required: list[str] = field(default_factory=list)
    filters: WordFilter | None = None


@dataclass(frozen=True)
class Page:
    """Which hits a search returns, and how much of each it lists."""

    top_k: int = 10
    offset: int = 0
    min_score: float = 0.0
    matched_limit: int | None = 20
    query_words_limit: int | None = 100


def encode_texts_sparse(model: LexicalModel, texts: list[str]) -> list[sp.csr_matrix]:
    """Model thread: a micro-batch of texts -> one sparse row each."""
    rows = model.sparsify(model.encode_texts(texts))
    return [rows[i] for i in range(rows.shape[0])]


class SearchPipeline:
    def __init__(
        self,
        model: LexicalModel,
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
        self.table_cache: LRUCache[sp.csr_matrix] = LRUCache(settings.query_cache_size)
        self.patches = PatchMaps(
            model,
            store,
            model_executor,
            metrics,
            settings.patch_cache_size,
            settings.max_image_pixels,
        )
        self.binder = binding.Binder(self.patches, metrics, settings.bind_cache_size)

    # --- query vectors ------------------------------------------------------------------------
    async def query_vector(
        self,
        text: str,
        mode: str,
        exclude: list[str],
        boost: dict[str, float],
        require: list[str] | None = None,
    ) -> QueryVector:
        self._check_length(text, "query")
        clean, inline_require, inline_exclude = split_filters(text)
        required = list(dict.fromkeys([*(require or []), *inline_require]))
        if not clean and required:  # "+circle": search for the required words themselves
            clean = " ".join(required)
        if not clean:
            raise InvalidInput(
                "the query has only exclusions ('-word'): add a word to search for",
                loc=["body", "query"],
            )
        edits = resolve_edits(  # 422 before any encoding
            self.vocabulary, exclude, boost, inline_exclude, require or [], inline_require
        )
        with self.metrics.stage("encode") as timer:
            base = await self.encode_text(clean, mode)
        row = apply_edits(base, edits)
        excluded = list(dict.fromkeys([*exclude, *inline_exclude]))
        return QueryVector(row, clean, excluded, timer.ms, required, edits.filters)

    async def encode_text(self, text: str, mode: str) -> sp.csr_matrix:
        """``model`` on the model thread (micro-batched); ``table`` and ``words`` need no model
        call and run here, on the event loop, behind a cache each."""
        if mode == "model":
            return await self.batcher.encode(text)
        if mode == "table":
            try:
                table = require_table(self.model)
            except MissingQueryTable as exc:
                raise InvalidInput(str(exc), loc=["body", "mode"]) from None
            return self._cached(self.table_cache, "table", text, table.encode_row)
        return self._cached(
            self.words_cache,
            "words",
            text,
            lambda t: bag_of_words_row(t, self.model.tokenizer, self.vocabulary),
        )

    def _cached(
        self,
        cache: LRUCache[sp.csr_matrix],
        name: str,
        text: str,
        encode: Callable[[str], sp.csr_matrix],
    ) -> sp.csr_matrix:
        cached = cache.get(text)
        self.metrics.cache_lookup(name, cached is not None)
        if cached is None:
            cached = encode(text)
            cache.put(text, cached)
        return cached

    async def image_query(
        self, data: bytes, name: str, exclude: list[str], require: list[str] | None = None
    ) -> QueryVector:
        """An uploaded image's lexical vector (415/413 if it is not a usable image)."""
        edits = resolve_edits(self.vocabulary, exclude, require=require or [])
        size = int(self.model.config.image.image_size)
        image = await asyncio.to_thread(decode_upload, data, self.settings.max_image_pixels, size)
        loop = asyncio.get_running_loop()
        with self.metrics.stage("encode") as timer:
            row = await loop.run_in_executor(
                self.model_executor, lambda: self.model.sparsify(self.model.encode_pil([image]))
            )
        row = apply_edits(row, edits)
        return QueryVector(row, name, exclude, timer.ms, list(require or []), edits.filters)

    def _check_length(self, text: str, field: str) -> None:
        limit = self.settings.max_query_chars
        if len(text) > limit:
            raise InvalidInput(
                f"the {field} is {len(text):,} characters long; the limit is {limit:,} "
                "(LEXVLA_MAX_QUERY_CHARS)",
                loc=["body", field],
            )

    def check_paging(self, page: Page) -> None:
        """This deployment's limits (the schemas carry only the hard ceilings)."""
        s = self.settings
        if page.top_k > s.max_top_k:
            raise InvalidInput(
                f"top_k={page.top_k} is above this server's limit of {s.max_top_k} "
                "(LEXVLA_MAX_TOP_K)",
                loc=["body", "top_k"],
            )
        if page.offset > s.max_offset:
            raise InvalidInput(
                f"offset={page.offset} is above this server's limit of {s.max_offset} "
                "(LEXVLA_MAX_OFFSET)",
                loc=["body", "offset"],
            )

    @property
    def score_store(self) -> CorpusStore | None:
        """Where hits' float rows come from: the store, or None for the engine's own rows
        (``exact_scores`` false); /search and /explain agree either way."""
        return self.store if self.settings.exact_scores else None

    # --- search -------------------------------------------------------------------------------
    async def search(
        self, req: SearchRequest, handle: IndexHandle, access: Access = OPEN
    ) -> SearchResponse:
        start = time.perf_counter()
        page = Page(req.top_k, req.offset, req.min_score, req.matched_limit, req.query_words_limit)
        self.check_paging(page)
        arrange = scope.arrangement(handle, access, req.where, req.sort, req.facets)
        q = await self.query_vector(req.query, req.mode, req.exclude, req.boost, req.require)
        return await self.run_search(handle, q, req.mode, page, start, req.bind, arrange)

    async def search_image(
        self,
        handle: IndexHandle,
        data: bytes,
        name: str,
        exclude: list[str],
        page: Page,
        require: list[str] | None = None,
        arrange: Arrangement = RELEVANCE,
    ) -> SearchResponse:
        start = time.perf_counter()
        self.check_paging(page)
        q = await self.image_query(data, name, exclude, require)
        return await self.run_search(handle, q, "image", page, start, arrange=arrange)

    async def run_search(
        self,
        handle: IndexHandle,
        q: QueryVector,
        mode: SearchMode,
        page: Page,
        start: float,
        bind: bool = False,
        arrange: Arrangement = RELEVANCE,
    ) -> SearchResponse:
        fetch = page  # what the index is asked for: the page, or bind's lexical candidates
        if bind and arrange.sort is not None:
            raise InvalidInput(
                "bind re-ranks by relevance; it cannot be combined with a field sort",
                loc=["body", "bind"],
            )
        if bind:
            if self.store is None:
                raise InvalidInput(
                    "bind needs the indexed images (LEXVLA_STORE) to read their patch vectors",
                    loc=["body", "bind"],
                )
            wanted = max(page.offset + page.top_k, self.settings.bind_candidates)
            fetch = replace(page, top_k=wanted, offset=0)
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            self.search_executor,
            lambda: served.search_handle(
                handle,
                self.score_store,
                self.vocabulary,
                q.row,
                top_k=fetch.top_k,
                offset=fetch.offset,
                min_score=fetch.min_score,
                matched_limit=fetch.matched_limit,
                rescore_factor=self.settings.rescore_factor,
                filters=q.filters,
                arrange=arrange,
            ),
        )
        self.metrics.stage_seconds.labels("search").observe(outcome.search_ms / 1e3)
        self.metrics.stage_seconds.labels("rescore").observe(outcome.rescore_ms / 1e3)
        records = await self.metadata_records(handle, [h.id for h in outcome.hits])
        hits = [
            SearchHit(
                rank=fetch.offset + n + 1,
                id=h.id,
                score=h.score,
                image_url=image_url(h.id),
                thumbnail_url=thumbnail_url(h.id),
                matched=[matched_word(c) for c in h.matched],
                other_matched_words=h.other_words,
                other_contribution=h.other_contribution,
                metadata=records.get(h.id, {}),
            )
            for n, h in enumerate(outcome.hits)
        ]
        if bind:
            hits = await self.binder.bind(q.row, hits, page.offset, page.top_k)
        timings = SearchTimings(
            encode_ms=q.encode_ms,
            search_ms=outcome.search_ms,
            rescore_ms=outcome.rescore_ms,
            total_ms=(time.perf_counter() - start) * 1e3,
        )
        return SearchResponse(
            query=q.text,
            mode=mode,
            excluded=q.excluded,
            filters=AppliedFilters(
                require=q.required, exclude=q.excluded, rule=RULE_TEXT if q.filters else ""
            ),
            active_words=q.row.nnz,
            query_words=word_weights(top_words(q.row, self.vocabulary, page.query_words_limit)),
            index_version=handle.version,
            top_k=page.top_k,
            offset=page.offset,
            hits=hits,
            timings=timings,
            notes=outcome.notes,
            facets=outcome.facets,
            matches=outcome.matches,
        )

    async def metadata_records(
        self, handle: IndexHandle, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        """id -> metadata record (on the search pool): the served version's own, else the
        corpus store's (a version published before versions carried metadata); {} without."""
        fields = handle.index.fields
        source: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None
        if fields is not None:
            source = fields.records
        elif self.store is not None:
            source = self.store.metadata_records
        if source is None or not ids:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.search_executor, source, ids)

    # --- encode -------------------------------------------------------------------------------
    async def encode(self, req: EncodeRequest) -> EncodeResponse:
        self._check_length(req.text, "text")
        with self.metrics.stage("encode"):
            row = await self.encode_text(req.text.strip(), req.mode)
        words = top_words(row, self.vocabulary)
        return EncodeResponse(
            text=req.text, mode=req.mode, vector=dict(words), active_words=len(words)
        )


def word_weights(pairs: list[tuple[str, float]]) -> list[WordWeight]:
    return [WordWeight(word=w, weight=v) for w, v in pairs]


def matched_word(c: served.Contribution) -> MatchedWord:
    return MatchedWord(
        word=c.word,
        query_weight=c.query_weight,
        image_weight=c.image_weight,
        contribution=c.contribution,
    )
