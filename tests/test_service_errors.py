"""Bad input gets a 4xx that says what is wrong; schemathesis finds no 5xx or off-schema answer."""

from __future__ import annotations

import io

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def _error(r, status: int, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str)
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"query": ""}, ["query", "at least 1 character"]),
        ({"query": "   "}, ["the query is empty"]),
        ({"query": "x " * 300}, ["600 characters long", "limit is 500", "LEXVLA_MAX_QUERY_CHARS"]),
        ({"query": "dog", "top_k": 0}, ["top_k", "greater than or equal to 1"]),
        ({"query": "dog", "top_k": 101}, ["top_k=101", "limit of 100"]),
        ({"query": "dog", "top_k": 5000}, ["top_k", "less than or equal to 1000"]),
        ({"query": "dog", "offset": -1}, ["offset"]),
        ({"query": "dog", "mode": "llm"}, ["mode", "'model', 'table' or 'words'"]),
        ({"query": "dog", "min_score": "high"}, ["min_score"]),
        ({"query": "dog", "boost": {"red": -1}}, ["boost.red", "greater than or equal to 0"]),
        ({"query": "dog", "colour": "red"}, ["colour", "Extra inputs are not permitted"]),
        ({"query": "-dog -cat"}, ["only exclusions"]),
        ({}, ["query", "Field required"]),
    ],
)
def test_bad_search_requests(client, body, fragments):
    _error(client.post("/search", json=body), 422, *fragments)


def test_malformed_and_non_json_bodies(client):
    r = client.post(
        "/search", content=b'{"query": "dog",', headers={"content-type": "application/json"}
    )
    body = _error(r, 422, "malformed JSON")
    assert body["errors"][0]["type"] == "json_invalid"
    nan = b'{"query": "dog", "min_score": NaN}'  # Python's json module accepts NaN
    _error(client.post("/search", content=nan, headers={"content-type": "application/json"}), 422,
           "min_score")  # fmt: skip
    r = client.post("/search", content=b"query=dog", headers={"content-type": "text/plain"})
    _error(r, 422)
    r = client.post(
        "/search", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
    )
    _error(r, 413, "request body too large", "LEXVLA_MAX_BODY_BYTES")


def test_unknown_ids_paths_and_methods(client):
    r = client.post("/explain", json={"query": "dog", "image_id": "missing.jpg"})
    _error(r, 404, "no image 'missing.jpg'")
    _error(client.get("/no/such/page"), 404, "no such path: /no/such/page")
    _error(client.get("/search"), 405, "method GET is not allowed")
    _error(client.post("/encode", json={"text": " "}), 422, "the text is empty")


def test_uploads_that_are_not_usable_images(client):
    def upload(data: bytes, name: str = "q.jpg"):
        return client.post("/search/image", files={"file": (name, data, "image/jpeg")})

    _error(upload(b"<html>not an image</html>"), 415, "not a usable image", "looks like text")
    _error(upload(b""), 415, "empty file")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buf, format="JPEG")
    _error(upload(buf.getvalue()[:200]), 415, "truncated")
    _error(client.post("/search/image", data={"top_k": "3"}), 422, "file", "Field required")
    good = buf.getvalue()
    r = client.post("/search/image", files={"file": ("q.jpg", good)}, data={"top_k": "0"})
    _error(r, 422, "top_k")
    r = client.post("/search/image", files={"file": ("q.jpg", good)}, data={"exclude": "red zzqx"})
    _error(r, 422, "unknown word 'zzqx'")


def test_oversized_uploads(tiny_model, service_settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    limited = service_settings.model_copy(
        update={"max_upload_bytes": 4096, "max_image_pixels": 10_000}
    )
    with TestClient(create_app(limited, model=tiny_model)) as client:
        big = io.BytesIO()
        Image.effect_noise((200, 200), 60).convert("RGB").save(big, format="PNG")
        r = client.post("/search/image", files={"file": ("big.png", big.getvalue())})
        _error(r, 413, "too large", "LEXVLA_MAX_UPLOAD_BYTES")
        wide = io.BytesIO()
        Image.new("RGB", (400, 30), (0, 0, 255)).save(wide, format="PNG")  # 12,000 pixels
        r = client.post("/search/image", files={"file": ("wide.png", wide.getvalue())})
        _error(r, 413, "too many pixels")


def test_admin_requires_the_api_key(client, tiny_model, service_settings):
    _error(client.post("/admin/reload"), 401, "missing API key")
    _error(client.post("/admin/reload", headers={"X-API-Key": "wrong"}), 401, "wrong API key")
    r = client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
    _error(r, 401, "wrong API key")
    r = client.post(
        "/admin/reload", json={"version": "../../etc"}, headers={"X-API-Key": "test-key"}
    )
    _error(r, 422, "version")
    r = client.post("/admin/reload", json={"version": "v0099"}, headers={"X-API-Key": "test-key"})
    _error(r, 404, "no index version 'v0099'")

    from fastapi.testclient import TestClient

    from service.main import create_app

    keyless = service_settings.model_copy(update={"api_key": None})
    with TestClient(create_app(keyless, model=tiny_model)) as other:
        r = other.post("/admin/reload", headers={"X-API-Key": "anything"})
        _error(r, 403, "disabled", "LEXVLA_API_KEY")


# --- schemathesis: the app's own OpenAPI document, generated requests, bounded ---------------------
def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(path, method, mode) of every operation; negative mode only where there is input."""
    from service.core.config import Settings
    from service.main import create_app

    spec = create_app(Settings(warmup=False)).openapi()  # no model needed to list the routes
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            out.append((path, method.upper(), GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                out.append((path, method.upper(), GenerationMode.NEGATIVE))
    return out


@pytest.fixture(scope="module")
def api_schema(tiny_model, service_settings):
    from service.main import create_app

    app = create_app(
        service_settings.model_copy(update={"max_concurrency": 10_000}), model=tiny_model
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.mark.parametrize(("path", "method", "mode"), _cases(), ids=str)
def test_openapi_contract(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(case):
        case.call_and_validate(checks=CHECKS)

    check()
