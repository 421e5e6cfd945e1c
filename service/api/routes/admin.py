"""``POST /admin/reload``: swap in a new index version atomically (API key required)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body

from service.api.deps import AdminDep, StateDep
from service.api.schemas import ReloadRequest, ReloadResponse
from service.core.errors import Conflict, NotFound, Unavailable, error_responses

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503),
)


@router.post("/reload", response_model=ReloadResponse)
async def reload(
    _: AdminDep, state: StateDep, req: Annotated[ReloadRequest | None, Body()] = None
) -> ReloadResponse:
    """Open the index version ``CURRENT`` names now (or ``version``) and serve it from now on.

    Requests already running finish on the version they started with.
    """
    if not state.ready:
        raise Unavailable("the service is still starting")
    try:
        previous, current = await state.reload(req.version if req else None)
    except FileNotFoundError as exc:
        raise NotFound(f"index not swapped: {exc}", loc=["body", "version"]) from None
    except ValueError as exc:  # VocabularyMismatchError, a corrupt or unreadable version
        raise Conflict(f"index not swapped, still serving the old one: {exc}") from None
    return ReloadResponse(
        previous=previous.version,
        current=current.version,
        engine=current.engine,
        images=await asyncio.to_thread(current.count),
    )
