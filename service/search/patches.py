"""Patch-level lexical vectors of stored images, computed on demand and cached.

Indexes keep one pooled vector per image; the 256 patch vectors that locate a word (``L x V``,
8.8 MB per image in float16 for the real 17k-word vocabulary) are recomputed from the stored image
when an explanation asks for them. The image is read and decoded in a worker thread, the model
runs in the model's own thread (never concurrently with query encoding), and the result is kept
in an LRU cache keyed by image id and content hash, so the heat maps of one explanation, and the
PNGs the UI then fetches, cost one model call. Concurrent requests for the same image share it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from indexer.store import CorpusStore
from model.protocols import LexicalModel
from service.core.errors import NotFound
from service.core.lru import LRUCache
from service.core.metrics import Metrics
from service.search.images import load_rgb, require_store

PatchSource = Literal["original", "thumbnail"]


@dataclass(frozen=True)
class PatchGrid:
    vectors: np.ndarray  # (grid*grid, V) float16
    grid_size: int
    source: PatchSource
    image: Any  # the decoded RGB image (heat maps are drawn over it)
    pooled_norm: float  # ||max over patches||: the image vector's scale before normalising
    ms: float = 0.0  # time it took to compute (0 when it came from the cache)

    def word(self, index: int) -> np.ndarray:
        """(grid, grid) float32 patch scores of one vocabulary index."""
        column = self.vectors[:, index].astype(np.float32)
        return column.reshape(self.grid_size, self.grid_size)


class PatchMaps:
    def __init__(
        self,
        model: LexicalModel,
        store: CorpusStore | None,
        model_executor: Executor,
        metrics: Metrics,
        cache_size: int = 8,
        max_pixels: int = 40_000_000,
    ):
        self.model = model
        self.store = store
        self.executor = model_executor
        self.metrics = metrics
        self.max_pixels = max_pixels
        self.cache: LRUCache[PatchGrid] = LRUCache(cache_size)
        self._pending: dict[tuple[str, str], asyncio.Future[PatchGrid]] = {}

    def key(self, image_id: str) -> tuple[str, str]:
        """(id, content hash) of a stored image: what cached results of its patches are keyed by
        (NotFound if the image or the store is missing)."""
        store = require_store(self.store, "a heat map")
        try:
            return image_id, store.metadata(image_id).sha256
        except KeyError:
            raise NotFound(f"no image {image_id!r} in the corpus store") from None

    async def get(
        self, image_id: str, keep: bool = True, key: tuple[str, str] | None = None
    ) -> PatchGrid:
        """Patch vectors of a stored image (NotFound if the image or the store is missing).
        ``keep=False`` uses the cache but does not add to it: a caller that needs many images
        once (bind's candidates) must not evict the heat maps an explanation is drawing.
        ``key``: the image's :meth:`key`, when the caller has already looked it up."""
        key = key if key is not None else self.key(image_id)
        store = require_store(self.store, "a heat map")
        cached = self.cache.get(key)
        self.metrics.cache_lookup("patches", cached is not None)
        if cached is not None:
            return dataclasses.replace(cached, ms=0.0)
        future = self._pending.get(key)
        if future is None:
            future = asyncio.ensure_future(self._compute(store, image_id))
            self._pending[key] = future
            future.add_done_callback(lambda _: self._pending.pop(key, None))
        grid = await asyncio.shield(future)
        if keep:
            self.cache.put(key, grid)
        return grid

    async def _compute(self, store: CorpusStore, image_id: str) -> PatchGrid:
        size = int(self.model.config.image.image_size)
        start = time.perf_counter()
        with self.metrics.stage("patches"):
            image, source = await asyncio.to_thread(
                load_rgb, store, image_id, self.max_pixels, size
            )
            loop = asyncio.get_running_loop()
            vectors, pooled_norm = await loop.run_in_executor(
                self.executor, self._patch_vectors, image
            )
        ms = (time.perf_counter() - start) * 1e3
        return PatchGrid(vectors, int(self.model.grid_size), source, image, pooled_norm, ms)

    def _patch_vectors(self, image: Any) -> tuple[np.ndarray, float]:
        """Model thread: the (L, V) float16 patch vectors and the norm of their maximum."""
        pixels = self.model.preprocess([image])
        out = self.model.patch_vectors(pixels)[0].float()
        return out.cpu().numpy().astype(np.float16), float(out.max(dim=0).values.norm())
