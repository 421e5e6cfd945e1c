"""``POST /encode``: a text's sparse lexical vector, as {word: weight}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import PipelineDep, require_search
from service.core.errors import error_responses
from service.schemas import EncodeRequest, EncodeResponse

router = APIRouter(
    dependencies=[Depends(require_search)],
    tags=["encode"],
    responses=error_responses(400, 413, 422, 429, 503),
)


@router.post("/encode", response_model=EncodeResponse)
async def encode(req: EncodeRequest, pipeline: PipelineDep) -> EncodeResponse:
    """The text's active words and weights (the vector a search with it would use)."""
    return await pipeline.encode(req)
