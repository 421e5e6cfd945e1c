"""``POST /explain`` (why an image matched, word by word) and its heat map PNGs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from service.api.deps import IndexDep, PipelineDep, SearchDep, require_search
from service.core.errors import error_responses
from service.schemas import ExplainRequest, ExplainResponse
from service.search import explain as explanations
from service.search import scope
from service.search.served import missing_in_index

router = APIRouter(
    dependencies=[Depends(require_search)],
    tags=["explain"],
    responses=error_responses(400, 404, 422, 429, 503),
)


@router.post("/explain", response_model=ExplainResponse, responses=error_responses(413))
async def explain(
    req: ExplainRequest, pipeline: PipelineDep, index: IndexDep, access: SearchDep
) -> ExplainResponse:
    """Per-word contributions, both sides' top words, and a heat map per matched word."""
    scope.check_in_index(index, access, req.image_id, missing_in_index(index, req.image_id))
    return await explanations.explain(pipeline, req, index)


@router.get(
    "/explain/{image_id:path}/heatmap.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The heat map over the image"}},
)
async def heatmap_png(
    pipeline: PipelineDep,
    index: IndexDep,
    access: SearchDep,
    image_id: Annotated[str, Path(min_length=1, max_length=1024)],
    word: Annotated[str, Query(min_length=1, max_length=64, description="A vocabulary word")],
    size: Annotated[int, Query(ge=64, le=1024, description="Side of the PNG in pixels")] = 448,
) -> Response:
    """Where ``word`` is in the image: its patch-level scores drawn over the image."""
    missing = missing_in_index(index, image_id, ("path", "image_id"))
    scope.check_in_index(index, access, image_id, missing)
    png = await explanations.heatmap_png(pipeline, image_id, word, size, index)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
