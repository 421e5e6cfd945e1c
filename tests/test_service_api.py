"""Service API with TestClient: search, explain, encode, images, health, errors."""

from __future__ import annotations

pytest_plugins = ["test_service_support"]


def test_smoke(client):
    r = client.post("/search", json={"query": "a red circle", "top_k": 3})
    assert r.status_code == 200
