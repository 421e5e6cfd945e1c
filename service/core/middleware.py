"""ASGI middleware: load shedding (429 + Retry-After), request body limits (413), HTTP metrics.

Load shedding. A service that queues without bound answers every request late once it falls
behind, then falls over; clip-retrieval's public back end did at ~10 QPS. Here at most
``max_concurrency`` requests are served at once; the next one is answered 429 at once with a
``Retry-After`` header, and costs nothing. Health, readiness and metrics are never shed, so
monitoring keeps working under overload. The app places it outside every other layer
(``service.main.SheddingApp``), so it records its own 429s in the request metrics.

Body limits. A ``Content-Length`` over the limit is refused before the body is read; a chunked
body is counted as it streams and refused when it passes the limit (the HTTPException raised
from ``receive`` propagates through FastAPI's body reading, which re-raises HTTP errors).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.metrics import Metrics

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def _send_json(send: Send, status: int, body: dict, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class ConcurrencyLimitMiddleware:
    """Refuse requests beyond ``limit`` in flight with 429 and ``Retry-After``."""

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int, metrics: Metrics):
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0
        self._shed_seconds: dict[str, Any] = {}  # per method: the 429s' histogram child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await self._refuse(scope, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight -= 1
                self.metrics.in_flight.dec()

        async def send_and_release(message: Message) -> None:
            # The slot is free once the last body chunk is handed to the server, before the
            # route's clean-up: a client that sends its next request as soon as it has the
            # answer (exactly ``limit`` such clients) must never be refused.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()

    async def _refuse(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        self.metrics.rejected.inc()
        detail = (
            f"server busy: {self.in_flight} requests in flight (limit {self.limit}, "
            f"LEXVLA_MAX_CONCURRENCY); retry after {self.retry_after_s} s"
        )
        headers = {"retry-after": str(self.retry_after_s)}
        await _send_json(send, 429, {"detail": detail, "errors": []}, headers)
        method = scope["method"]
        child = self._shed_seconds.get(method)
        if child is None:  # labels() costs a few microseconds: looked up once per method
            child = self._shed_seconds[method] = self.metrics.request_seconds.labels(
                method, "unmatched", "429"
            )
        child.observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 for request bodies over ``default`` bytes (``per_path`` overrides by exact path)."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, tuple[int, str]]):
        self.app = app
        self.default = (default, "LEXVLA_MAX_BODY_BYTES")
        self.per_path = per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, setting = self.per_path.get(scope["path"], self.default)

        def too_large(size: str) -> str:
            return (
                f"request body too large: {size} bytes, the limit for {scope['path']} is "
                f"{limit:,} bytes ({setting})"
            )

        length = _content_length(scope)
        if length is not None and length > limit:
            await _send_json(send, 413, {"detail": too_large(f"{length:,}"), "errors": []}, {})
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, too_large(f"more than {limit:,}"))
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Observe every HTTP request's latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
