"""``/healthz`` (the process is up), ``/readyz`` (ready to search) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from indexer.engines.base import IndexUnavailable
from service.api.deps import StateDep
from service.schemas import Health, ProcessInfo, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready yet (which part is missing)"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the model is loaded, the index open and reachable, and warm-up done.

    Counting the index's images checks that an index server answers (within its timeout, off
    the event loop); while it does not, the service is not ready (503, with the reason). Also
    lists every process of the server with the version it serves, and a version this process
    could not open (it keeps serving the one it has, so it stays ready).
    """
    handle = state.holder.current if state.holder is not None else None
    images, trouble = None, ""
    if handle is not None:
        try:
            images = await asyncio.to_thread(handle.count)
        except IndexUnavailable as exc:
            trouble = f"the index is unavailable: {exc}"
    body = Readiness(
        ready=state.ready and not trouble,
        model=state.model is not None,
        index=handle is not None and not trouble,
        warmup=state.warmed_up,
        index_version=handle.version if handle else None,
        images=images,
        index_error=state.index_error,
        processes=[
            ProcessInfo(**asdict(p)) for p in await asyncio.to_thread(state.processes.statuses)
        ],
    )
    if not body.ready:
        missing = [k for k in ("model", "index", "warmup") if not getattr(body, k)]
        body.detail = trouble or "waiting for: " + ", ".join(missing)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
