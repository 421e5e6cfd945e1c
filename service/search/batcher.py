"""Micro-batching of text queries onto the model, behind an LRU cache of query vectors.

A language model encodes 16 short texts in little more time than one, so concurrent queries
share model calls: each waits on an ``asyncio`` queue; a collector task takes the first waiting
text, then gathers more until ``max_batch`` texts or ``max_wait_ms`` have passed, and runs the
batch in the model's worker thread (one thread: model calls never overlap, and the event loop
stays free). Identical texts in flight share one slot and one future, and every result is cached
(LRU), so a popular query costs one encoding.

Waiters are shielded: a client that disconnects cancels its own wait, never the shared future
that other requests for the same text are waiting on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from service.core.lru import LRUCache
from service.core.metrics import Metrics

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """``await batcher.encode(text)`` -> ``encode_batch([text, ...])[i]``, batched and cached."""

    def __init__(
        self,
        encode_batch: Callable[[list[str]], Sequence[T]],
        executor: Executor,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 3.0,
        cache_size: int = 4096,
        metrics: Metrics | None = None,
        name: str = "query",
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.encode_batch = encode_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.cache: LRUCache[T] = LRUCache(cache_size)
        self.metrics = metrics
        self.name = name
        self.batches = 0  # model calls made (for tests and the benchmark)
        self._queue: asyncio.Queue[str] | None = None
        self._pending: dict[str, asyncio.Future[T]] = {}
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._collect(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self._pending.clear()

    # --- use ----------------------------------------------------------------------------------
    async def encode(self, text: str) -> T:
        cached = self.cache.get(text)
        if self.metrics is not None:
            self.metrics.cache_lookup(self.name, cached is not None)
        if cached is not None:
            return cached
        future = self._pending.get(text)
        if future is None:
            if self._queue is None or self._task is None or self._task.done():
                raise RuntimeError("the query batcher is not running")
            future = asyncio.get_running_loop().create_future()
            self._pending[text] = future
            self._queue.put_nowait(text)
        return await asyncio.shield(future)

    # --- the collector ------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, texts: list[str]) -> None:
        loop = asyncio.get_running_loop()
        self.batches += 1
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(texts))
        try:
            results: Sequence[Any] = await loop.run_in_executor(
                self.executor, self.encode_batch, texts
            )
            if len(results) != len(texts):
                raise RuntimeError(f"encoder returned {len(results)} results for {len(texts)}")
        except Exception as exc:  # every waiter of this batch gets the error
            for text in texts:
                future = self._pending.pop(text, None)
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        for text, result in zip(texts, results, strict=True):
            self.cache.put(text, result)
            future = self._pending.pop(text, None)
            if future is not None and not future.done():
                future.set_result(result)
