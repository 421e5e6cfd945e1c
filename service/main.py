"""The app factory: ``create_app(settings, *, model=None, index=None, store=None)``.

Whatever is not passed in is loaded by the lifespan from the settings (``LEXVLA_CHECKPOINT``,
``LEXVLA_INDEX``, ``LEXVLA_STORE``), once per process. Tests pass a tiny model and an in-memory
index; ``lexvla serve`` loads them itself first, so a vocabulary mismatch is reported before the
server starts listening.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from indexer.engines.base import SearchIndex
from indexer.store import CorpusStore
from model.protocols import LexicalModel
from service.api.routes import admin, encode, explain, health, images, search, ui, writes
from service.core.config import Settings
from service.core.errors import install_error_handlers
from service.core.metrics import Metrics
from service.core.middleware import (
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    MetricsMiddleware,
)
from service.search.indexes import IndexHandle
from service.state import ServiceState

DESCRIPTION = """Interpretable text-to-image search on LexVLA sparse lexical vectors.

Images and queries are sparse vectors over a vocabulary of real words; a score is a sparse dot
product, so every hit comes with the words that matched and how much each contributed, and
`/explain` locates each matched word in the image (patch-level heat maps).
"""
UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and form fields around an uploaded file


class SheddingApp(FastAPI):
    """FastAPI with the load shedder (:class:`ConcurrencyLimitMiddleware`) outside the whole
    middleware stack, Starlette's and FastAPI's own layers included.

    ``add_middleware`` can only place a middleware inside Starlette's error handler and
    FastAPI's built-in layers. Under overload a worker refuses ~1,000 requests a second on the
    event loop that also answers its searches. Those layers cost a 429 about a third of its
    Python time (py-spy profiles: docs/lab-notes.md), so the shedder answers before them.
    """

    shedding: dict[str, Any] | None = None

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        if self.shedding is None:
            return stack
        return ConcurrencyLimitMiddleware(stack, **self.shedding)


def create_app(
    settings: Settings | None = None,
    *,
    model: LexicalModel | None = None,
    index: SearchIndex | IndexHandle | None = None,
    store: CorpusStore | None = None,
) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics, model=model, index=index, store=store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = SheddingApp(
        title="LexVLA search", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.service = state
    install_error_handlers(app)
    for module in (search, explain, encode, images, writes, health, admin, ui):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=ui.STATIC), name="static")

    # Outermost, the concurrency limit (SheddingApp: it sheds before anything else runs, and
    # records its 429s in the request metrics itself). Then, as each add_middleware wraps what
    # was added before it: Metrics (every admitted request), the body limit, the routes.
    upload_limit = settings.max_upload_bytes + UPLOAD_OVERHEAD
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_body_bytes,
        per_path={"/search/image": (upload_limit, "LEXVLA_MAX_UPLOAD_BYTES")},
    )
    app.shedding = {
        "limit": settings.max_concurrency,
        "retry_after_s": settings.retry_after_s,
        "metrics": metrics,
    }
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Write this deployment's request limits into the OpenAPI document it serves."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        limits = {
            "top_k": {"maximum": settings.max_top_k},
            "offset": {"maximum": settings.max_offset},
            "query": {"maxLength": settings.max_query_chars},
            "text": {"maxLength": settings.max_query_chars},
        }
        for component in schema.get("components", {}).get("schemas", {}).values():
            for name, prop in component.get("properties", {}).items():
                if name in limits and ("maximum" in prop or "maxLength" in prop):
                    prop.update(limits[name])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
