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
(docs/lab-notes.md). It costs one image-encoder pass per candidate that is not in the patch
cache (``LEXVLA_PATCH_CACHE_SIZE``), so it is off by default.
"""

from __future__ import annotations

import asyncio

import numpy as np
import scipy.sparse as sp

from service.api.schemas import SearchHit
from service.search.patches import PatchGrid, PatchMaps


def bound_score(grid: PatchGrid, query: sp.csr_matrix) -> tuple[float, int]:
    """(bound score, index of the best patch) of one image's patch vectors for a 1 x V query."""
    weights = np.asarray(query.data, dtype=np.float32)
    per_patch = grid.vectors[:, query.indices].astype(np.float32) @ weights
    best = int(np.argmax(per_patch)) if len(per_patch) else 0
    if grid.pooled_norm <= 0 or not len(per_patch):
        return 0.0, best
    return float(per_patch[best]) / grid.pooled_norm, best


async def bind(
    patches: PatchMaps, query: sp.csr_matrix, hits: list[SearchHit], offset: int, top_k: int
) -> list[SearchHit]:
    """``hits`` (the lexical top candidates, best first) ordered by the mean of the lexical and
    the bound score (ties: lexical order), cut to ``offset:offset + top_k``, ranks renumbered."""
    grids = await asyncio.gather(*(patches.get(h.id) for h in hits))
    scored = []
    for n, (hit, grid) in enumerate(zip(hits, grids, strict=True)):
        bound, patch = bound_score(grid, query)
        row, column = divmod(patch, grid.grid_size)
        scored.append((-(hit.score + bound) / 2, n, hit, bound, [row, column]))
    scored.sort(key=lambda t: (t[0], t[1]))
    page = scored[offset : offset + top_k]
    return [
        hit.model_copy(update={"rank": offset + i + 1, "bound_score": bound, "bound_patch": where})
        for i, (_, _, hit, bound, where) in enumerate(page)
    ]
