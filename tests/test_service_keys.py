"""API keys: ``lexvla keys`` and the service's keys file (``service.core.keys``,
``service.api.deps``): rights, 401 without a valid key, rotation and revocation without a
restart, a corrupt file refused at start and survived while serving."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from lexvla.cli import main as lexvla
from service.core.keys import KeyRing, KeysError, add_key, read_keys


def _add(capsys, path, *args: str) -> str:
    assert lexvla(["keys", "--file", str(path), "add", *args]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("lvk_") and "not stored" in out.err
    return key


def test_keys_are_made_listed_and_revoked_and_only_hashes_are_kept(tmp_path, capsys):
    path = tmp_path / "keys.json"
    key = _add(capsys, path, "--collection", "team-a", "--collection", "team-b",
               "--rights", "write,search", "--name", "uploader")  # fmt: skip
    assert key not in path.read_text()  # only its hash is stored
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    (entry,) = read_keys(path)
    assert entry.collections == ("team-a", "team-b") and entry.rights == ("search", "write")
    assert lexvla(["keys", "--file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert entry.id in listed and "uploader" in listed and key not in listed
    assert entry.sha256 not in listed

    ring = KeyRing(path)
    access = ring.access(key)
    assert access is not None and access.can("write") and not access.can("admin")
    assert access.sees("team-b") and not access.sees("team-c")
    assert ring.access(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # one char off
    assert ring.access("lvk_" + entry.id + "_x") is None

    assert lexvla(["keys", "--file", str(path), "revoke", entry.id]) == 0
    assert read_keys(path) == []
    ring.refresh(force=True)
    assert ring.access(key) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "--collection", "A B"], "is not a collection name"),
        (["add", "--collection", "a", "--rights", "search,delete"], "unknown rights ['delete']"),
        (["add"], "name at least one collection"),
        (["revoke", "deadbeef"], "no key 'deadbeef'"),
    ],
)
def test_bad_key_commands_get_one_line(tmp_path, capsys, args, message):
    assert lexvla(["keys", "--file", str(tmp_path / "keys.json"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_keys_file_is_refused_with_its_name(tmp_path, monkeypatch, capsys):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(KeysError, match="cannot read the keys file"):
        read_keys(path)
    assert lexvla(["keys", "--file", str(path), "list"]) == 2
    assert "keys.json" in capsys.readouterr().err
    monkeypatch.delenv("LEXVLA_KEYS_FILE", raising=False)
    assert lexvla(["keys", "list"]) == 2
    assert "LEXVLA_KEYS_FILE" in capsys.readouterr().err


@pytest.fixture
def keyed(service_settings, tiny_model, tmp_path):
    """An app with a keys file, and keys: every collection (search), admin, write-only,
    collection-scoped."""
    from service.main import create_app

    path = tmp_path / "keys.json"
    keys = {
        "search": add_key(path, ["*"], ["search"])[0],
        "admin": add_key(path, ["*"], ["admin"])[0],
        "write": add_key(path, ["*"], ["write"])[0],
        "scoped": add_key(path, ["team-a"], ["search"])[0],
    }
    settings = service_settings.model_copy(update={"keys_file": path})
    with TestClient(create_app(settings, model=tiny_model)) as client:
        yield client, keys, path


def test_with_a_keys_file_every_read_needs_a_valid_key(keyed, service_corpus):
    client, keys, _ = keyed
    image = service_corpus.ids[0]
    calls = [
        ("POST", "/search", {"json": {"query": "a red circle"}}),
        ("POST", "/explain", {"json": {"query": "a red circle", "image_id": image}}),
        ("POST", "/encode", {"json": {"text": "a red circle"}}),
        ("GET", f"/images/{image}", {}),
        ("GET", f"/thumbnails/{image}", {}),
    ]
    for method, path, kwargs in calls:
        missing = client.request(method, path, **kwargs)
        assert missing.status_code == 401 and "missing API key" in missing.text, path
        wrong = client.request(method, path, headers={"X-API-Key": "lvk_00000000_x"}, **kwargs)
        assert wrong.status_code == 401 and "wrong API key" in wrong.text, path
        bearer = {"Authorization": f"Bearer {keys['search']}"}
        assert client.request(method, path, headers=bearer, **kwargs).status_code == 200, path
        write_only = client.request(method, path, headers={"X-API-Key": keys["write"]}, **kwargs)
        assert write_only.status_code == 403 and "no search right" in write_only.text
        scoped = client.request(method, path, headers={"X-API-Key": keys["scoped"]}, **kwargs)
        if path == "/search":  # the corpus is all in collection "default": team-a sees nothing
            assert scoped.status_code == 200 and scoped.json()["hits"] == [], path
        elif path == "/encode":  # no image involved
            assert scoped.status_code == 200
        else:  # another collection's image is a missing one
            assert scoped.status_code == 404 and "no image" in scoped.text, path
    assert client.get("/healthz").status_code == 200  # operations stay open
    assert client.get("/readyz").status_code == 200


def test_admin_needs_the_admin_right_or_the_api_key(keyed):
    client, keys, _ = keyed
    reload = "/admin/reload"
    denied = client.post(reload, headers={"X-API-Key": keys["search"]})
    assert denied.status_code == 403 and "no admin right" in denied.text
    assert client.post(reload, headers={"X-API-Key": keys["admin"]}).status_code == 200
    assert client.post(reload, headers={"X-API-Key": "test-key"}).status_code == 200
    search = client.post("/search", json={"query": "a cat"}, headers={"X-API-Key": "test-key"})
    assert search.status_code == 200  # LEXVLA_API_KEY is an admin key for everything


def test_keys_rotate_and_revoke_without_a_restart(keyed, capsys):
    client, keys, path = keyed
    fresh = _add(capsys, path, "--collection", "*")
    deadline = time.monotonic() + 60
    while (
        client.post("/search", json={"query": "x"}, headers={"X-API-Key": fresh}).status_code != 200
    ):
        assert time.monotonic() < deadline, "a new key was not accepted"
        time.sleep(0.1)
    old = next(e.id for e in read_keys(path) if e.sha256 and e.rights == ("search",))
    assert lexvla(["keys", "--file", str(path), "revoke", old]) == 0
    while (
        client.post(
            "/search", json={"query": "x"}, headers={"X-API-Key": keys["search"]}
        ).status_code
        != 401
    ):
        assert time.monotonic() < deadline + 60, "a revoked key still worked"
        time.sleep(0.1)
    path.write_text(json.dumps({"format": "lexvla-keys", "keys": [{"id": 1}]}))  # broken
    time.sleep(1.2)
    assert (
        client.post("/search", json={"query": "x"}, headers={"X-API-Key": fresh}).status_code == 200
    )


def test_serve_refuses_a_corrupt_keys_file_in_one_line(
    service_corpus, tiny_checkpoint, tmp_path, capsys
):
    from service.cli import main as serve

    path = tmp_path / "keys.json"
    path.write_text("[]")
    status = serve(["--checkpoint", str(tiny_checkpoint), "--index", str(service_corpus.index),
                    "--keys-file", str(path)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "is not a keys file" in err and "Traceback" not in err
