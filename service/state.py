"""The app's state: model, index holder, store, pipeline and executors, loaded once per process.

``create_app`` makes one :class:`ServiceState`; the lifespan calls :meth:`start` (load what was
not passed in, check vocabularies, start the micro-batcher, warm up) and :meth:`stop`. Loading
refuses an index or store built with another vocabulary than the model's
(``model.vocabulary.VocabularyMismatchError``, whose message names both hashes and the fix).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from indexer.engines.base import SearchIndex
from indexer.store import CorpusStore
from model.protocols import LexicalModel
from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.threads import lower_priority, set_time_slice
from service.search.indexes import (
    IndexHandle,
    IndexHolder,
    index_options,
    open_handle,
    open_store,
    wrap_index,
)
from service.search.pipeline import Page, SearchPipeline

log = logging.getLogger("service")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ServiceState:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        model: LexicalModel | None = None,
        index: SearchIndex | IndexHandle | None = None,
        store: CorpusStore | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.store = store
        self._given_index = index
        self.holder: IndexHolder | None = None
        self.pipeline: SearchPipeline | None = None
        self.warmed_up = False
        self.started = time.time()
        self.model_executor: ThreadPoolExecutor | None = None
        self.search_executor: ThreadPoolExecutor | None = None
        if model is not None and index is not None:  # fail at construction, not first request
            wrap_index(index, model.vocabulary.hash)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and check what is missing, then serve; may run again after :meth:`stop`."""
        s = self.settings
        nice = (s.worker_nice,)  # both pools' threads run below the event loop
        self.model_executor = ThreadPoolExecutor(
            1, "lexvla-model", initializer=lower_priority, initargs=nice
        )
        self.search_executor = ThreadPoolExecutor(
            s.search_threads, "lexvla-search", initializer=lower_priority, initargs=nice
        )
        if s.torch_threads is not None:
            torch.set_num_threads(s.torch_threads)
        sys.setswitchinterval(s.gil_switch_ms / 1e3)  # process-wide: the event loop's latency
        # this is the loop's thread; the pools reset theirs
        if not set_time_slice(s.loop_slice_us) and s.loop_slice_us:
            log.debug("the kernel did not take LEXVLA_LOOP_SLICE_US (needs Linux 6.12+)")
        if self.model is None:
            self.model = await asyncio.to_thread(load_model, s)
        vocabulary = self.model.vocabulary
        if self.store is None and s.store is not None:
            self.store = await asyncio.to_thread(open_store, s.store, vocabulary)
        if self.holder is not None:  # a restart keeps the version it was serving
            handle = self.holder.current
        elif self._given_index is not None:
            handle = wrap_index(self._given_index, vocabulary.hash)
        elif s.index is not None:
            handle = await asyncio.to_thread(
                open_handle, s.index, vocabulary.hash, index_options(s)
            )
        else:
            raise ValueError("no index to serve: set LEXVLA_INDEX (or pass --index)")
        self.holder = IndexHolder(handle, s.index, index_options(s))
        images = await asyncio.to_thread(handle.count)
        self.metrics.index_images.set(images)
        self.pipeline = SearchPipeline(
            self.model, self.store, s, self.metrics, self.model_executor, self.search_executor
        )
        self.pipeline.batcher.start()
        if s.warmup:
            await self.warm_up()
        self.warmed_up = True
        freeze_heap(s.gc_freeze)
        log.info(
            "serving index %s (%s engine, %d images) with %s",
            handle.version,
            handle.engine,
            images,
            self.model.checkpoint_id,
        )

    async def warm_up(self) -> None:
        """One query through every path (encode, both modes, search) before reporting ready."""
        assert self.pipeline is not None and self.holder is not None
        start = time.perf_counter()
        pipeline, handle = self.pipeline, self.holder.current
        query = await pipeline.query_vector("a photo", "model", [], {})
        await pipeline.encode_text("a photo", "words")
        await pipeline.run_search(handle, query, "model", Page(top_k=1, matched_limit=0), start)
        pipeline.batcher.cache.clear()  # warm-up queries are not real traffic
        log.info("warm-up took %.0f ms", (time.perf_counter() - start) * 1e3)

    async def stop(self) -> None:
        self.warmed_up = False
        if self.settings.gc_freeze:
            gc.unfreeze()  # what the service held may be collected again
        if self.pipeline is not None:
            await self.pipeline.batcher.stop()
        for executor in (self.model_executor, self.search_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    # --- queries ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model is not None and self.holder is not None and self.warmed_up

    async def reload(self, version: str | None = None) -> tuple[IndexHandle, IndexHandle]:
        assert self.holder is not None and self.model is not None
        previous = self.holder.current
        current = await self.holder.reload(self.model.vocabulary.hash, version)
        freeze_heap(self.settings.gc_freeze)  # the new version's objects; the old one's freed
        images = await asyncio.to_thread(current.count)
        self.metrics.index_images.set(images)
        self.metrics.index_reloads.inc()
        log.info(
            "index swapped: %s -> %s (%d images)",
            previous.version,
            current.version,
            images,
        )
        return previous, current


def load_model(settings: Settings) -> LexicalModel:
    from model import LexVLA

    if settings.checkpoint is None:
        raise ValueError("no model to serve: set LEXVLA_CHECKPOINT (or pass --checkpoint)")
    dtype = _DTYPES[settings.dtype] if settings.dtype else None
    model = LexVLA.from_pretrained(settings.checkpoint, device=settings.device, dtype=dtype)
    model.eval()
    if settings.static_queries and settings.device.startswith("cuda"):
        sizes = sorted({1, settings.batch_size})
        model.text.enable_static_queries(sizes).warm_up()  # captured once, before serving
    return model


def freeze_heap(enabled: bool) -> None:
    """Collect once, then move every surviving object into the permanent generation.

    Python's full (generation 2) collection walks every tracked object. With a model, its
    tokenizer and an index loaded that is millions of objects, and each full collection, which
    the allocations of ordinary requests trigger every few seconds under load, held the GIL
    for 100-300 ms (measured at 1M images): every request in flight, 429s included, waited
    that long. Frozen objects are still freed by reference counting; only reference cycles among
    them wait for :func:`gc.unfreeze`, which runs at stop, and before each re-freeze after an
    index swap so that the old version's cycles are collected.
    """
    if not enabled:
        return
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info(
        "froze %d objects in %.0f ms (gc.freeze)",
        gc.get_freeze_count(),
        (time.perf_counter() - start) * 1e3,
    )
