"""Errors: every 4xx says what is wrong, in one JSON shape, and bad input never becomes a 500.

All error responses are ``{"detail": "<one human sentence>", "errors": [{loc, msg, type}]}``
(:class:`ErrorResponse`), whether they come from request validation (422), from the search code
(:class:`ServiceError` subclasses), from Starlette (404 for an unknown path, 405) or from load
shedding (429). The OpenAPI document declares that shape for every error status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")


class ErrorItem(BaseModel):
    loc: list[str | int] = []
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ErrorItem] = []


class ServiceError(Exception):
    """An error the client can fix (or wait out); rendered as :class:`ErrorResponse`."""

    status_code = 400
    type = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        loc: Sequence[str | int] = (),
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.loc = list(loc)
        self.headers = headers

    def response(self) -> JSONResponse:
        item = ErrorItem(loc=self.loc, msg=self.detail, type=self.type)
        body = ErrorResponse(detail=self.detail, errors=[item] if self.loc else [])
        return JSONResponse(body.model_dump(), self.status_code, headers=self.headers)


class NotFound(ServiceError):
    status_code, type = 404, "not_found"


class InvalidInput(ServiceError):
    """Well-formed but unusable input: an unknown word, an image that cannot be decoded."""

    status_code, type = 422, "invalid_input"


class UnsupportedMediaType(ServiceError):
    status_code, type = 415, "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status_code, type = 413, "payload_too_large"


class Unauthorized(ServiceError):
    status_code, type = 401, "unauthorized"


class Forbidden(ServiceError):
    status_code, type = 403, "forbidden"


class Conflict(ServiceError):
    status_code, type = 409, "conflict"


class Unavailable(ServiceError):
    status_code, type = 503, "unavailable"


class InsufficientStorage(ServiceError):
    status_code, type = 507, "insufficient_storage"


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[ErrorItem]]:
    """Pydantic/FastAPI errors -> (one readable sentence, JSON-safe items)."""
    items: list[ErrorItem] = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid value"))
        kind = str(err.get("type", "value_error"))
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            msg = f"malformed JSON body: {reason}" if reason else "malformed JSON body"
            loc = ["body"]
        items.append(ErrorItem(loc=loc, msg=msg, type=kind))
    parts = [f"{'.'.join(map(str, i.loc))}: {i.msg}" if i.loc else i.msg for i in items[:5]]
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, items


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail, items = describe_validation_errors(exc.errors())
    return JSONResponse(ErrorResponse(detail=detail, errors=items).model_dump(), 422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "the request body cannot be parsed (not UTF-8 JSON, or broken form data)"
    elif exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    body = ErrorResponse(detail=detail).model_dump()
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = ErrorResponse(detail=f"internal error ({type(exc).__name__}); see the server log")
    return JSONResponse(body.model_dump(), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "The request body cannot be parsed"),
        (401, "Missing or wrong API key"),
        (403, "Admin endpoints disabled (no API key configured)"),
        (404, "Unknown image id, version or path"),
        (409, "The new index version cannot be served"),
        (415, "The upload is not a usable image"),
        (413, "Request body too large"),
        (422, "Invalid request (named field and reason)"),
        (429, "Too many requests in flight; retry after Retry-After seconds"),
        (503, "Not ready (model or index not loaded)"),
    ]
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = ERROR_RESPONSES.get(code, {"model": ErrorResponse})
    return out
