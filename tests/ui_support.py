"""Support for the web UI's tests: a stand-in for the service (the client is ``bench/live.py``).

:func:`serve_stub` serves the real page with a stand-in for the API that records what the page
sends: ``POST /search`` with ``where``/``sort``/``facets`` (answering ``facets`` and
``matches``) and ``GET /fields``, so a test can assert the exact requests. The
stand-in answers with canned bodies built from the service's response schemas, logs every
request (path, query, the ``Authorization`` header and the JSON body), and, with ``key`` set,
refuses requests without ``Authorization: Bearer <key>`` the way the service does (401,
``WWW-Authenticate: Bearer``, the service's error body).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from bench.live import Browser
from service.api.routes import ui
from service.core.errors import Unauthorized
from service.schemas import (
    AppliedFilters,
    ExplainResponse,
    ExplainTimings,
    MatchedWord,
    SearchHit,
    SearchResponse,
    SearchTimings,
    WordWeight,
)
from tests.service_fixtures import free_port, png, shape_image

CATCH_ERRORS = """window.pageErrors = [];
addEventListener('error', (e) => pageErrors.push(String(e.message)));
addEventListener('unhandledrejection', (e) => pageErrors.push(String(e.reason)));"""


FIELDS = {
    "album": {"type": "keyword"},
    "collection": {"type": "keyword"},
    "taken_at": {"type": "datetime"},
    "tags": {"type": "keywords"},
    "path": {"type": "keyword"},
}
RECORDS = [  # id, album, collection, taken_at
    ("beach.jpg", "Trip", "family", "2021-06-01T10:00:00"),
    ("harbour.jpg", "Trip", "family", "2021-06-02T18:45:00+02:00"),
    ("cake.jpg", "Birthday", "family", "2020-03-14"),
    ("desk.jpg", "Office", "work", "2019-11-30T09:15:00"),
]
FACETS = {
    "album": {"Trip": 2, "Birthday": 1, "Office": 1},
    "collection": {"family": 3, "work": 1},
    "taken_at:year": {"2019": 1, "2020": 1, "2021": 2},
}
WORDS = ["red", "circle"]


def _hit(rank: int, image_id: str, album: str, collection: str, taken_at: str) -> dict[str, Any]:
    matched = [
        MatchedWord(
            word=w, query_weight=1.0, image_weight=0.5 / (i + 1), contribution=0.5 / (i + 1)
        )
        for i, w in enumerate(WORDS)
    ]
    metadata = {"album": album, "collection": collection, "taken_at": taken_at, "path": image_id}
    return SearchHit(
        rank=rank, id=image_id, score=sum(m.contribution for m in matched),
        image_url=f"/images/{image_id}", thumbnail_url=f"/thumbnails/{image_id}",
        matched=matched, metadata=metadata,
    ).model_dump()  # fmt: skip


def search_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The canned search answer: every record, whatever the request asks (the tests check what
    the page sends and how it shows an answer, not the filtering)."""
    response = SearchResponse(
        query=body.get("query", ""), mode=body.get("mode", "model"),
        query_words=[WordWeight(word=w, weight=1.0) for w in WORDS], active_words=len(WORDS),
        excluded=[], filters=AppliedFilters(), index_version="stub", top_k=body.get("top_k", 10),
        offset=body.get("offset", 0), hits=[], notes=[],
        timings=SearchTimings(encode_ms=1.0, search_ms=1.0, rescore_ms=0.0, total_ms=2.0),
    ).model_dump()  # fmt: skip
    response["hits"] = [_hit(n, *record) for n, record in enumerate(RECORDS, 1)]
    asked = body.get("facets") or []
    response["facets"] = {name: FACETS[name] for name in asked if name in FACETS}
    response["matches"] = len(RECORDS) if (asked or body.get("sort")) else None
    return response


def explain_answer(body: dict[str, Any]) -> dict[str, Any]:
    image_id = body["image_id"]
    matched = [
        MatchedWord(word=w, query_weight=1.0, image_weight=0.5, contribution=0.5) for w in WORDS
    ]
    return ExplainResponse(
        image_id=image_id, query=body["query"], mode=body.get("mode", "model"), score=1.0,
        matched=matched, image_words=[WordWeight(word=w, weight=0.5) for w in WORDS],
        query_words=[WordWeight(word=w, weight=1.0) for w in WORDS], grid_size=2, heatmaps=[],
        patches_from="thumbnail", image_url=f"/images/{image_id}",
        thumbnail_url=f"/thumbnails/{image_id}", index_version="stub",
        timings=ExplainTimings(encode_ms=1.0, explain_ms=1.0, patches_ms=1.0, total_ms=3.0),
    ).model_dump()  # fmt: skip


@dataclass
class Stub:
    url: str
    log: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    fields: dict[str, dict[str, str]] = field(default_factory=lambda: dict(FIELDS))

    def requests(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["path"] == path]


def create_stub_app(stub: Stub) -> FastAPI:
    app = FastAPI()
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=ui.STATIC), name="static")
    picture = png(shape_image("circle", "red"))

    @app.middleware("http")
    async def record_and_check_key(request: Request, call_next):
        path = request.url.path
        if path in ("/", "/favicon.ico") or path.startswith("/static/"):  # the page, the browser's
            return await call_next(request)
        raw = await request.body()
        auth = request.headers.get("authorization")
        stub.log.append({
            "method": request.method, "path": request.url.path,
            "query": dict(request.query_params), "authorization": auth,
            "body": json.loads(raw) if raw else None,
        })  # fmt: skip
        if stub.key is not None and auth != f"Bearer {stub.key}":
            detail = "wrong API key" if auth else "missing API key"
            return Unauthorized(detail, headers={"WWW-Authenticate": "Bearer"}).response()
        return await call_next(request)

    @app.get("/fields")
    async def fields() -> dict[str, Any]:
        return {"fields": stub.fields}

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        return JSONResponse(search_answer(await request.json()))

    @app.post("/explain")
    async def explain(request: Request) -> JSONResponse:
        return JSONResponse(explain_answer(await request.json()))

    @app.get("/thumbnails/{image_id:path}")
    @app.get("/explain/{image_id:path}/heatmap.png")
    async def picture_of(image_id: str) -> Response:
        return Response(picture, media_type="image/png")

    return app


def serve_stub():
    """Yields a running :class:`Stub` (uvicorn in a thread on a free loopback port)."""
    port = free_port()
    stub = Stub(url=f"http://127.0.0.1:{port}")
    config = uvicorn.Config(create_stub_app(stub), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI stub server did not start")
        time.sleep(0.05)
    try:
        yield stub
    finally:
        server.should_exit = True
        thread.join(10)


DIALOG_OPEN = "document.getElementById('key-dialog')?.open"


def enter_key(b: Browser, key: str) -> None:
    """Type ``key`` into the page's API-key form and submit it."""
    b.js(f"document.getElementById('key-input').value = {json.dumps(key)}")
    b.js("document.getElementById('key-form').requestSubmit()")
