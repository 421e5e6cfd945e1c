"""``POST /admin/reload``: every process of the server serves one index version (API key)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Body

from service.api.deps import AdminDep, StateDep
from service.core.errors import Conflict, NotFound, Unavailable, error_responses
from service.schemas import ProcessInfo, ReloadRequest, ReloadResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503),
)


@router.post("/reload", response_model=ReloadResponse)
async def reload(
    _: AdminDep, state: StateDep, req: Annotated[ReloadRequest | None, Body()] = None
) -> ReloadResponse:
    """Serve ``version`` (pinned for every process and replica over this index directory, also
    for workers that restart), or without one, whatever ``CURRENT`` names (the pin removed).

    Answers once every process of this server serves it (409 naming those that do not).
    Requests already running finish on the version they started with.
    """
    if not state.ready or state.holder is None:
        raise Unavailable("the service is still starting")
    previous = state.holder.current
    try:
        current, statuses = await state.reload(req.version if req else None)
    except FileNotFoundError as exc:
        raise NotFound(f"index not swapped: {exc}", loc=["body", "version"]) from None
    except ValueError as exc:  # VocabularyMismatchError, a corrupt or unreadable version
        raise Conflict(f"index not swapped, still serving the old one: {exc}") from None
    behind = [p for p in statuses if p.index_version != current.version]
    if behind:
        named = "; ".join(
            f"pid {p.pid} serves {p.index_version}" + (f" ({p.error})" if p.error else "")
            for p in behind
        )
        raise Conflict(
            f"{current.version} is served by {len(statuses) - len(behind)} of {len(statuses)} "
            f"processes; not by: {named}"
        )
    return ReloadResponse(
        previous=previous.version,
        current=current.version,
        engine=current.engine,
        images=await asyncio.to_thread(current.count),
        processes=[ProcessInfo(**asdict(p)) for p in statuses],
    )
