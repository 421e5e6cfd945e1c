"""``POST /search`` (text query) and ``POST /search/image`` (an uploaded image as the query)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.api.deps import IndexDep, PipelineDep, SearchDep, SettingsDep, require_search
from service.core.config import HARD_MAX_OFFSET, HARD_MAX_TOP_K
from service.core.errors import InvalidInput, PayloadTooLarge, error_responses
from service.schemas import FieldInfo, FieldsResponse, SearchRequest, SearchResponse
from service.search import scope
from service.search.pipeline import Page

router = APIRouter(
    dependencies=[Depends(require_search)],
    tags=["search"],
    responses=error_responses(400, 422, 429, 503),
)


@router.post("/search", response_model=SearchResponse, responses=error_responses(413))
async def search(
    req: SearchRequest, pipeline: PipelineDep, index: IndexDep, access: SearchDep
) -> SearchResponse:
    """Images ranked by the sparse dot product with the query, each score explained by word;
    or, with ``sort``, every image that passes in a field's order; ``facets`` count them."""
    return await pipeline.search(req, index, access)


@router.get("/fields", response_model=FieldsResponse)
async def fields(index: IndexDep) -> FieldsResponse:
    """The served index's metadata fields and their types (what where, sort and facets take)."""
    columns = index.index.fields
    known = columns.registry.fields if columns is not None else {}
    return FieldsResponse(
        index_version=index.version,
        fields={n: FieldInfo(type=f.type, source=f.source) for n, f in sorted(known.items())},
    )


@router.post("/search/image", response_model=SearchResponse, responses=error_responses(413, 415))
async def search_image(
    pipeline: PipelineDep,
    index: IndexDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The query image (any common format)")],
    access: SearchDep,
    top_k: Annotated[int, Form(ge=1, le=HARD_MAX_TOP_K)] = 10,
    offset: Annotated[int, Form(ge=0, le=HARD_MAX_OFFSET)] = 0,
    min_score: Annotated[float, Form(ge=0.0, allow_inf_nan=False)] = 0.0,
    matched_limit: Annotated[int, Form(ge=0, le=100_000)] = 20,
    exclude: Annotated[
        str, Form(max_length=2000, description="Filter: no image that has any of these words")
    ] = "",
    require: Annotated[
        str, Form(max_length=2000, description="Filter: only images that have all these words")
    ] = "",
    where: Annotated[
        str, Form(max_length=20_000, description="Metadata conditions as JSON (see /search)")
    ] = "",
    sort: Annotated[str, Form(min_length=1, max_length=70)] = "relevance",
    facets: Annotated[
        str, Form(max_length=2000, description="Facets, comma-separated (see /search)")
    ] = "",
) -> SearchResponse:
    """Images similar to an uploaded one: the upload's lexical vector is the query."""
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the uploaded file is larger than {settings.max_upload_bytes:,} bytes "
            "(LEXVLA_MAX_UPLOAD_BYTES)",
            loc=["body", "file"],
        )
    page = Page(top_k, offset, min_score, matched_limit, query_words_limit=30)
    excluded = exclude.replace(",", " ").split()
    required = require.replace(",", " ").split()
    name = file.filename or "upload"
    arrange = scope.arrangement(
        index, access, form_json(where, "where"), sort, facets.replace(",", " ").split()
    )
    return await pipeline.search_image(index, data, name, excluded, page, required, arrange)


def form_json(text: str, name: str) -> dict[str, Any] | None:
    """A form field holding a JSON object ('' for none); 422 naming the field otherwise."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{name} is not JSON: {exc.msg}", loc=["body", name]) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a JSON object", loc=["body", name])
    return value
