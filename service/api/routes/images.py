"""``GET /images/{id}`` (the original file) and ``GET /thumbnails/{id}`` (JPEG made at indexing)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

from service.api.deps import SearchDep, StateDep, require_search
from service.core.errors import NotFound, error_responses
from service.search import scope
from service.search.images import missing_in_store, read_original, read_thumbnail, require_store

router = APIRouter(
    dependencies=[Depends(require_search)],
    tags=["images"],
    responses=error_responses(404, 422, 429),
)
ImageIdPath = Annotated[str, Path(min_length=1, max_length=1024)]
_IMAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {}}, "description": "The image"}
}


@router.get("/images/{image_id:path}", response_class=Response, responses=_IMAGE)
async def image(image_id: ImageIdPath, state: StateDep, access: SearchDep) -> Response:
    """The original image file, as indexed."""
    store = require_store(state.store, "serving images")
    await asyncio.to_thread(
        scope.check_in_store, store, access, image_id, missing_in_store(image_id)
    )
    found = await asyncio.to_thread(read_original, store, image_id)
    if found is None:
        raise NotFound(
            f"image {image_id!r} is indexed but its original file cannot be read any more; "
            f"its thumbnail is at /thumbnails/{image_id}",
            loc=["path", "image_id"],
        )
    return Response(found.data, media_type=found.media_type, headers=_CACHE)


@router.get("/thumbnails/{image_id:path}", response_class=Response, responses=_IMAGE)
async def thumbnail(image_id: ImageIdPath, state: StateDep, access: SearchDep) -> Response:
    """The thumbnail (JPEG, at most 256 px) made when the image was indexed."""
    store = require_store(state.store, "serving thumbnails")
    await asyncio.to_thread(
        scope.check_in_store, store, access, image_id, missing_in_store(image_id)
    )
    data = await asyncio.to_thread(read_thumbnail, store, image_id)
    return Response(data, media_type="image/jpeg", headers=_CACHE)


_CACHE = {"Cache-Control": "max-age=86400"}
