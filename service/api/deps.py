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
from service.core.keys import ADMIN, OPEN, Access
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
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _given(api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return api_key if api_key is not None else (bearer.credentials if bearer else None)


KeyDep = Annotated[str | None, Depends(_api_key_header)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_access(state: StateDep, api_key: KeyDep, bearer: BearerDep) -> Access | None:
    """What the request's key (``X-API-Key`` or ``Authorization: Bearer``) may do.

    ``LEXVLA_API_KEY`` is an admin key. With a keys file, a request without a valid key is
    refused (401). Without one the service is open for searching, and any other key grants
    nothing more (None)."""
    given = _given(api_key, bearer)
    admin = state.settings.api_key
    if (
        given
        and admin
        and secrets.compare_digest(given.encode(), admin.get_secret_value().encode())
    ):
        return ADMIN
    if state.keys is None:
        return None
    if not given:
        raise Unauthorized(_MISSING, headers=_CHALLENGE)
    access = state.keys.access(given)
    if access is None:
        raise Unauthorized("wrong API key", headers=_CHALLENGE)
    return access


_MISSING = "missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
AccessDep = Annotated[Access | None, Depends(get_access)]


async def require_search(access: AccessDep) -> Access:
    """Search, explain, images and thumbnails: any key of the keys file with the search right
    (or none, when there is no keys file); what it sees is limited to its collections
    (``service.search.scope``)."""
    if access is None:
        return OPEN
    if not access.can("search"):
        raise Forbidden("this API key has no search right")
    return access


SearchDep = Annotated[Access, Depends(require_search)]


async def require_write(state: StateDep, access: AccessDep) -> Access:
    """Adding, changing and deleting images: ``LEXVLA_API_KEY`` or a keys-file key with the
    write right (for the image's collection, checked by the route). With neither configured,
    writes are off: an open service never takes writes from anyone."""
    if access is None:
        if state.settings.api_key is None and state.keys is None:
            raise Forbidden(
                "writes are disabled: configure LEXVLA_KEYS_FILE (keys with the write right) or "
                "LEXVLA_API_KEY"
            )
        raise Unauthorized(_MISSING, headers=_CHALLENGE)
    if not access.can("write"):
        raise Forbidden("this API key has no write right")
    return access


WriteDep = Annotated[Access, Depends(require_write)]


async def require_admin(
    state: StateDep, access: AccessDep, api_key: KeyDep, bearer: BearerDep
) -> None:
    """Admin routes: ``LEXVLA_API_KEY``, or a keys-file key with the admin right."""
    if state.settings.api_key is None and state.keys is None:
        raise Forbidden("admin endpoints are disabled: this server has no LEXVLA_API_KEY set")
    if access is None:
        wrong = _given(api_key, bearer)
        raise Unauthorized("wrong API key" if wrong else _MISSING, headers=_CHALLENGE)
    if not access.can("admin"):
        raise Forbidden("this API key has no admin right")


AdminDep = Annotated[None, Depends(require_admin)]
