"""The app's state: model, index holder, store, pipeline and executors, loaded once per process.

``create_app`` makes one :class:`ServiceState`; the lifespan calls :meth:`start` (load what was
not passed in, check vocabularies, start the micro-batcher, warm up, start following the index
directory) and :meth:`stop`. Loading refuses an index or store built with another vocabulary
than the model's (``model.vocabulary.VocabularyMismatchError``, whose message names both hashes
and the fix).

**One version everywhere.** The index directory names the version to serve (``CURRENT``, or
``PINNED`` while an admin pins one); every process checks it every ``LEXVLA_INDEX_REFRESH_S``
(:meth:`follow`) and swaps by itself, so all workers and all replicas over one directory serve
the same version within that delay, and a worker that (re)starts opens the same one. A version
that fails to open leaves the old one serving; the failure is logged once, counted
(``lexvla_index_open_failures_total``), shown by ``/readyz``, and retried when the directory
names another version or after ``RETRY_FAILED_S``. Each process records what it serves in the
server's run folder (:mod:`service.core.processes`), so :meth:`reload` can wait for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from indexer.engines.base import SearchIndex
from indexer.engines.versions import pin, unpin
from indexer.group_commit import GroupCommit
from indexer.live import LiveWriter
from indexer.store import CorpusStore
from model.protocols import LexicalModel
from service.core.config import Settings
from service.core.errors import Conflict
from service.core.keys import KeyRing
from service.core.metrics import Metrics
from service.core.processes import ProcessRegistry, ProcessStatus
from service.core.threads import lower_priority
from service.search.indexes import (
    IndexHandle,
    IndexHolder,
    index_options,
    open_handle,
    open_store,
    search_threads,
    wrap_index,
)
from service.search.pipeline import Page, QueryVector, SearchPipeline

log = logging.getLogger("service")
RETRY_FAILED_S = 30.0  # a version that failed to open is tried again after this long
RELOAD_WAIT_S = 60.0  # how long POST /admin/reload waits for every process to serve the version
FULL_REFREEZE_S = 600.0  # a full collection and re-freeze after swaps, at most this often
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
        self.processes = ProcessRegistry(settings.run_dir)
        self.keys = KeyRing(settings.keys_file) if settings.keys_file is not None else None
        self.index_error: str | None = None  # the last version that failed to open, and why
        self._failed: tuple[str, float] | None = None  # (version, when) of that failure
        self._follower: asyncio.Task | None = None
        self._writer: LiveWriter | None = None
        self._adds: GroupCommit | None = None
        self._optimizing: asyncio.Task | None = None
        self._warm_query: QueryVector | None = None
        self._full_freeze = time.monotonic()  # when the heap was last collected and frozen
        if model is not None and index is not None:  # fail at construction, not first request
            wrap_index(index, model.vocabulary.hash)

    @property
    def writes_enabled(self) -> bool:
        """True when this server takes writes: keys or an admin key, a store, an index
        directory with versions."""
        holder = self.holder
        keyed = self.settings.api_key is not None or self.keys is not None
        return keyed and self.store is not None and holder is not None and holder.follows

    def writer(self) -> LiveWriter:
        """The writer of single-image changes (``indexer.live``); 409 when this server serves
        no corpus store or no versioned index directory to write to."""
        if self._writer is None:
            holder = self.holder
            if self.store is None or holder is None or not holder.follows or holder.source is None:
                raise Conflict(
                    "writes need a corpus store (LEXVLA_STORE) and an index directory with "
                    "versions (LEXVLA_INDEX, as `lexvla index build` makes it)"
                )
            self._writer = LiveWriter(self.store, holder.source, self.settings.max_image_pixels)
        return self._writer

    def adds(self) -> GroupCommit:
        """Image adds through :meth:`writer`, those arriving together in one version
        (``indexer.group_commit``)."""
        if self._adds is None:
            self._adds = GroupCommit(self.writer())
        return self._adds

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
        # like the compact engine's threads: N workers share the cores rather than each take all
        torch.set_num_threads(s.torch_threads or search_threads(s.workers))
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
        loop = asyncio.get_running_loop()

        def closed(version: str) -> None:  # from whichever thread let go of it last
            loop.call_soon_threadsafe(self._closed, version)

        self.holder = IndexHolder(handle, s.index, index_options(s), closed)
        images = await asyncio.to_thread(handle.count)
        self.metrics.served(handle.version, images)
        self.pipeline = SearchPipeline(
            self.model, self.store, s, self.metrics, self.model_executor, self.search_executor
        )
        self.pipeline.batcher.start()
        if s.warmup:
            await self.warm_up()
        self.warmed_up = True
        self.processes.record(handle.version)
        freeze_heap(s.gc_freeze)
        if self.writes_enabled:  # a crash between a write's commit and its publish
            caught_up = await asyncio.to_thread(self.writer().catch_up)
            if caught_up is not None:
                log.warning("published %s: the store held writes its index did not", caught_up)
                await self.follow(force=True)
        if self.holder.follows:
            self._follower = asyncio.create_task(self._follow_forever(), name="index-follower")
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
        await self.pipeline.encode_text("a photo", "words")
        await self.warm_index(self.holder.current)
        log.info("warm-up took %.0f ms", (time.perf_counter() - start) * 1e3)

    async def warm_index(self, handle: IndexHandle) -> None:
        """One search on ``handle`` (a version about to be swapped in: its files are read and
        its kernels compiled before the first request)."""
        assert self.pipeline is not None
        pipeline, start = self.pipeline, time.perf_counter()
        if self._warm_query is None:  # encoded once: a swap then costs no model call
            self._warm_query = await pipeline.query_vector("a photo", "model", [], {})
            pipeline.batcher.cache.clear()  # warm-up queries are not real traffic
        page = Page(top_k=1, matched_limit=0)
        await pipeline.run_search(handle, self._warm_query, "model", page, start)

    async def stop(self) -> None:
        self.warmed_up = False
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self.settings.gc_freeze:
            gc.unfreeze()  # what the service held may be collected again
        if self.pipeline is not None:
            await self.pipeline.batcher.stop()
        for executor in (self.model_executor, self.search_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        if self._optimizing is not None:  # a thread: it finishes, then the writer closes
            await self._optimizing
            self._optimizing = None
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)

    # --- queries ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model is not None and self.holder is not None and self.warmed_up

    # --- following the index directory ---------------------------------------------------------
    async def _follow_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_refresh_s)
            try:
                await self.follow()
                self._optimize_when_quiet()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the follower die: log, keep serving, try again
                log.exception("checking which index version to serve failed")

    def _optimize_when_quiet(self) -> None:
        """Start :meth:`LiveWriter.optimize <indexer.live.LiveWriter.optimize>` off the event
        loop once this process has written and no process has published a version for
        ``optimize_after_s``: the small blocks and deleted rows of live writes are rewritten
        while writes pause. One at a time; a write that comes meanwhile waits for its lock."""
        writer, after = self._writer, self.settings.optimize_after_s
        if writer is None or not writer.written or after <= 0:
            return
        if self._optimizing is not None and not self._optimizing.done():
            return
        if writer.quiet_s >= after:
            self._optimizing = asyncio.create_task(self._optimize(writer), name="index-optimize")

    async def _optimize(self, writer: LiveWriter) -> None:
        try:
            version = await asyncio.to_thread(writer.optimize)
        except Exception:  # the old version keeps serving; tried again after the next write
            log.exception("optimising the index after live writes failed")
            return
        if version is not None:
            log.info("published %s: the index rewritten in a batch build's shape", version)

    async def follow(self, force: bool = False) -> IndexHandle:
        """Serve the version the index directory names now; the handle served afterwards.

        A version that failed to open is not tried again within ``RETRY_FAILED_S`` unless
        ``force``; with ``force`` a failure raises (``POST /admin/reload`` reports it)."""
        assert self.holder is not None and self.model is not None
        current = self.holder.current
        try:
            wanted = await asyncio.to_thread(self.holder.wanted)
        except (OSError, ValueError) as exc:  # CURRENT or PINNED missing, unreadable, corrupt
            self._failure(f"the index directory {self.holder.source}", "is unreadable", exc)
            if force:
                raise
            return current
        if wanted == current.version:
            if self.index_error is not None:
                self._failed = self.index_error = None
                self.processes.record(current.version)
            return current
        failed = self._failed
        recently = failed is not None and time.monotonic() - failed[1] < RETRY_FAILED_S
        if not force and recently and failed is not None and failed[0] == wanted:
            return current
        try:
            handle = await self.holder.swap(self.model.vocabulary.hash, wanted, self.warm_index)
        except Exception as exc:
            self._failure(wanted, "did not open", exc)
            if force:
                raise
            return current
        self._failed = self.index_error = None
        images = await asyncio.to_thread(handle.count)
        self.metrics.served(handle.version, images, previous=current.version)
        self.processes.record(handle.version)
        log.info("index swapped: %s -> %s (%d images)", current.version, handle.version, images)
        return handle

    def _failure(self, what: str, problem: str, exc: Exception) -> None:
        """Keep serving; report ``what`` (a version, or the directory) once, count it, show it."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        repeated = self._failed is not None and self._failed[0] == what
        self._failed = (what, time.monotonic())
        self.index_error = f"{what} {problem}: {reason}"
        assert self.holder is not None
        self.processes.record(self.holder.current.version, self.index_error)
        if not repeated:  # once per version, not once per refresh
            self.metrics.index_open_failures.inc()
            log.error("%s; still serving %s", self.index_error, self.holder.current.version)

    def _closed(self, version: str) -> None:
        """A retired version's last request ended and it was closed: hand back its memory. A
        full re-freeze (collecting the old versions' reference cycles) holds the GIL for a
        walk of the whole heap, so it runs at most every ``FULL_REFREEZE_S``; in between (live
        writes swap versions often) only the new objects are frozen, which costs nothing."""
        log.info("index %s closed (its last request ended)", version)
        full = time.monotonic() - self._full_freeze >= FULL_REFREEZE_S
        if full:
            self._full_freeze = time.monotonic()
        freeze_heap(self.settings.gc_freeze, full)

    async def reload(self, version: str | None = None) -> tuple[IndexHandle, list[ProcessStatus]]:
        """Pin ``version`` (or unpin: follow ``CURRENT``), serve it here now, and wait until
        every process of this server serves it; (the handle, every process's status).

        Raises ``ValueError`` (bad name, nothing to follow, or the version does not open here),
        ``FileNotFoundError`` (no such version)."""
        assert self.holder is not None
        source = self.holder.source
        if source is None or not self.holder.follows:
            self.holder.wanted()  # raises the message for an index object
            raise ValueError(f"{source} is a single version, not an index directory to follow")
        if version is not None:
            await asyncio.to_thread(pin, source, version)
        else:
            await asyncio.to_thread(unpin, source)
        current = await self.follow(force=True)
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:
            statuses = await asyncio.to_thread(self.processes.statuses)
            failed = f"{current.version} did not open"
            behind = [
                p
                for p in statuses
                if p.index_version != current.version and not (p.error or "").startswith(failed)
            ]
            if not behind or time.monotonic() > deadline:
                return current, statuses
            await asyncio.sleep(0.05)


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


def freeze_heap(enabled: bool, full: bool = True) -> None:
    """Collect once, then move every surviving object into the permanent generation.

    Python's full (generation 2) collection walks every tracked object. With a model, its
    tokenizer and an index loaded that is millions of objects, and each full collection, which
    the allocations of ordinary requests trigger every few seconds under load, held the GIL
    for a long time with millions of objects: every request in flight, 429s included, waited
    that long (docs/lab-notes.md has the profile). Frozen objects are still freed by reference
    counting; only reference cycles among them wait for :func:`gc.unfreeze`, which runs at stop,
    and before a full re-freeze after an index swap so that the old versions' cycles are
    collected; ``full`` False only freezes what is new.
    """
    if not enabled:
        return
    if not full:  # only what is new since the last freeze: no collection, no heap walk
        gc.freeze()
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
