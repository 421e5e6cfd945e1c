"""Dependencies of the routes, as ``Annotated[..., Depends()]`` aliases (FastAPI template style).

``IndexDep`` takes the current index handle once per request: a reload during the request swaps
the holder's reference, never the handle this request already has (in-flight requests finish on
the old version).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop (and a wait for the GIL) per dependency per request, for functions that only read an
attribute.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.core.config import Settings
from service.core.errors import Forbidden, Unauthorized, Unavailable
from service.search.indexes import IndexHandle
from service.search.pipeline import SearchPipeline
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_pipeline(state: StateDep) -> SearchPipeline:
    if not state.ready or state.pipeline is None:
        raise Unavailable("the service is starting: model, index or warm-up not ready yet")
    return state.pipeline


PipelineDep = Annotated[SearchPipeline, Depends(get_pipeline)]


async def get_index(state: StateDep) -> IndexHandle:
    if state.holder is None:
        raise Unavailable("no index is open yet")
    return state.holder.current


IndexDep = Annotated[IndexHandle, Depends(get_index)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


async def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes: the key from ``X-API-Key`` or ``Authorization: Bearer`` must match."""
    if settings.api_key is None:
        raise Forbidden("admin endpoints are disabled: this server has no LEXVLA_API_KEY set")
    given = api_key if api_key is not None else (bearer.credentials if bearer else None)
    if not given:
        raise Unauthorized(
            "missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.api_key.get_secret_value()
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("wrong API key", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Annotated[None, Depends(require_api_key)]
