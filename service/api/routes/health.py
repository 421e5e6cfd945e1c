"""``/healthz`` (the process is up), ``/readyz`` (ready to search) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.deps import StateDep
from service.api.schemas import Health, Readiness

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
    handle = state.holder.current if state.holder is not None else None
    body = Readiness(
        ready=state.ready,
        model=state.model is not None,
        index=handle is not None,
        warmup=state.warmed_up,
        index_version=handle.version if handle else None,
        images=handle.count() if handle else None,
    )
    if not body.ready:
        missing = [k for k in ("model", "index", "warmup") if not getattr(body, k)]
        body.detail = "waiting for: " + ", ".join(missing)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
