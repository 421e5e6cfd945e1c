"""Re-ranking by binding: the query's words at one place in the image (``"bind": true``).

A lexical score is a bag of words: "a red heart beside a brown circle" holds every word that "a
red circle" asks for, with weights like a red circle's, so no lexical score can rank it below
one (``lexvla demo`` measures this: all of the top 5 of "a red circle" show something red and a
circle, 4 of them a red circle). LexVLA's image vector is the maximum over the image's patches
of their lexical vectors (``model/image_encoder.py``), so the patch vectors that the heat maps
draw also say whether the words sit together.

The *bound* score of an image is its best patch's dot product with the query, on the scale of
the image vector: ``max_l q . p_l / ||max_l p_l||``. It is at most the lexical score (a sparse
image row drops words under the threshold, so slightly above it is possible), and close to it
only when one patch carries every query word near its image-wide weight. With ``bind``, the top
``LEXVLA_BIND_CANDIDATES`` lexical hits are ordered by the mean of the two scores; each hit
keeps its lexical ``score`` (still the sum of its word contributions) and reports
``bound_score`` and the patch (row, column) where the query's words meet.

Ours, not the paper's: a re-ranking over the model's own patch vectors, measured on the demo
(docs/lab-notes.md). It costs one image-encoder pass per candidate, so it is off by default. The
bound scores are kept per (image, query) (``LEXVLA_BIND_CACHE_SIZE``: a few numbers each, where
the patch vectors are megabytes), so paging through or repeating a bound search costs no encoder
pass; the candidates' patch vectors are read through the patch cache without being added to it,
so a bound search does not evict the heat maps of ``/explain``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import scipy.sparse as sp

from service.core.lru import LRUCache
from service.core.metrics import Metrics
from service.schemas import SearchHit
from service.search.patches import PatchGrid, PatchMaps


def bound_score(grid: PatchGrid, query: sp.csr_matrix) -> tuple[float, int]:
    """(bound score, index of the best patch) of one image's patch vectors for a 1 x V query."""
    weights = np.asarray(query.data, dtype=np.float32)
    per_patch = grid.vectors[:, query.indices].astype(np.float32) @ weights
    best = int(np.argmax(per_patch)) if len(per_patch) else 0
    if grid.pooled_norm <= 0 or not len(per_patch):
        return 0.0, best
    return float(per_patch[best]) / grid.pooled_norm, best


class Binder:
    """Bound scores of images for queries, computed from their patch vectors and cached."""

    def __init__(self, patches: PatchMaps, metrics: Metrics, cache_size: int = 4096):
        self.patches = patches
        self.metrics = metrics
        self.cache: LRUCache[tuple[float, list[int]]] = LRUCache(cache_size)

    async def bound(
        self, image_id: str, query: sp.csr_matrix, query_key: tuple[bytes, bytes]
    ) -> tuple[float, list[int]]:
        """(bound score, [row, column] of the best patch) of one stored image for a query
        (``query_key``: its indices' and values' bytes, which the cache is keyed by)."""
        image = self.patches.key(image_id)
        key = (*image, *query_key)
        cached = self.cache.get(key)
        self.metrics.cache_lookup("bound", cached is not None)
        if cached is not None:
            return cached
        grid = await self.patches.get(image_id, keep=False, key=image)
        score, patch = bound_score(grid, query)
        found = (score, list(divmod(patch, grid.grid_size)))
        self.cache.put(key, found)
        return found

    async def bind(
        self, query: sp.csr_matrix, hits: list[SearchHit], offset: int, top_k: int
    ) -> list[SearchHit]:
        """``hits`` (the lexical top candidates, best first) ordered by the mean of the lexical
        and the bound score (ties: lexical order), cut to ``offset:offset + top_k``, ranks
        renumbered."""
        query_key = (query.indices.tobytes(), query.data.tobytes())
        bounds = await asyncio.gather(*(self.bound(h.id, query, query_key) for h in hits))
        scored = [
            (-(hit.score + bound) / 2, n, hit, bound, where)
            for n, (hit, (bound, where)) in enumerate(zip(hits, bounds, strict=True))
        ]
        scored.sort(key=lambda t: (t[0], t[1]))
        page = scored[offset : offset + top_k]
        return [
            hit.model_copy(
                update={"rank": offset + i + 1, "bound_score": bound, "bound_patch": where}
            )
            for i, (_, _, hit, bound, where) in enumerate(page)
        ]
