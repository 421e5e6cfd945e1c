"""``/explain``: why an image matched a query, word by word, and where each word is in the image.

An explanation is the full list of matched words with their contributions (their sum is the
score), the heaviest words of the image and of the query, and for the top matched words a heat
map: the word's score in each of the image's 16x16 patch-level vectors (``search.patches``),
as numbers and as a PNG drawn over the image (``search.heatmap``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from service.schemas import ExplainRequest, ExplainResponse, ExplainTimings, HeatMap
from service.search import heatmap, served
from service.search.indexes import IndexHandle
from service.search.patches import PatchGrid, PatchSource
from service.search.pipeline import SearchPipeline, matched_word, word_weights
from service.search.query import top_words, word_index
from service.search.urls import heatmap_url, image_url, thumbnail_url


async def explain(
    pipeline: SearchPipeline, req: ExplainRequest, handle: IndexHandle
) -> ExplainResponse:
    start = time.perf_counter()
    vocabulary = pipeline.vocabulary
    image_row = served.image_row(handle, pipeline.score_store, req.image_id)  # 404 before encoding
    q = await pipeline.query_vector(req.query, req.mode, req.exclude, req.boost, req.require)
    records = await pipeline.metadata_records(handle, [req.image_id])
    with pipeline.metrics.stage("explain") as timer:
        hit = served.explain_row(q.row, image_row, vocabulary)
        notes: list[str] = []
        maps: list[HeatMap] = []
        source: PatchSource | None = None
        patches_ms = 0.0
        if req.heatmaps and hit.matched:
            try:
                grid = await pipeline.patches.get(req.image_id)
            except Exception as exc:  # the explanation stands without heat maps
                notes.append(f"no heat maps: {getattr(exc, 'detail', exc)}")
            else:
                source, patches_ms = grid.source, grid.ms
                maps = [_heatmap(req.image_id, c, grid) for c in hit.matched[: req.heatmaps]]
                if source == "thumbnail":
                    notes.append("the original image is unavailable: maps use its thumbnail")
    return ExplainResponse(
        image_id=req.image_id,
        query=q.text,
        mode=req.mode,
        score=hit.score,
        matched=[matched_word(c) for c in hit.matched],
        image_words=word_weights(top_words(image_row, vocabulary, req.top_words)),
        query_words=word_weights(top_words(q.row, vocabulary, req.top_words)),
        grid_size=int(pipeline.model.grid_size),
        heatmaps=maps,
        patches_from=source,
        image_url=image_url(req.image_id),
        thumbnail_url=thumbnail_url(req.image_id),
        index_version=handle.version,
        notes=notes,
        metadata=records.get(req.image_id, {}),
        timings=ExplainTimings(
            encode_ms=q.encode_ms,
            explain_ms=timer.ms,
            patches_ms=patches_ms,
            total_ms=(time.perf_counter() - start) * 1e3,
        ),
    )


async def heatmap_png(
    pipeline: SearchPipeline, image_id: str, word: str, size: int, handle: IndexHandle
) -> bytes:
    """PNG of ``word``'s patch scores over the image (422 unknown word, 404 unknown image)."""
    index = word_index(pipeline.vocabulary, word, "word", ("query", "word"))
    served.image_row(handle, pipeline.score_store, image_id, loc=("path", "image_id"))
    grid = await pipeline.patches.get(image_id)
    image_size = int(pipeline.model.config.image.image_size)
    with pipeline.metrics.stage("heatmap"):
        drawn = heatmap.overlay(grid.image, grid.word(index), image_size, size)
        return await asyncio.to_thread(heatmap.png_bytes, drawn)


def _heatmap(image_id: str, c: served.Contribution, grid: PatchGrid) -> HeatMap:
    values = grid.word(c.index).astype(np.float64)
    return HeatMap(
        word=c.word,
        contribution=c.contribution,
        min=float(values.min()),
        max=float(values.max()),
        values=np.round(values, 6).tolist(),
        url=heatmap_url(image_id, c.word),
    )
