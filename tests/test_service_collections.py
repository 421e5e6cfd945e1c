"""A photo collection through the API: where, sort, facets, and keys limited to collections.

An index is built from a CSV manifest (image, caption, album, taken_at, collection) with the
indexer's own job; every answer is checked against the manifest itself.
"""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient

from service.core.keys import add_key
from tests.service_fixtures import index_folder, png, shape_image

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
ALBUMS = ["Trip", "Home", "Zoo"]


def manifest_rows() -> list[dict[str, str]]:
    rows = []
    for n in range(18):
        shape, colour = SHAPES[n % 3], list(COLOURS)[(n // 3) % 3]
        rows.append({
            "image": f"p{n:02d}-{colour}-{shape}.png",
            "caption": f"a {colour} {shape}",
            "album": ALBUMS[n % 3] if n % 5 else "Trip",
            "taken_at": f"20{10 + n % 7:02d}-0{1 + n % 9}-1{n % 10}T1{n % 10}:00:00"
            + ("+02:00" if n % 4 == 0 else ""),
            "collection": "alpha" if n % 2 == 0 else "beta",
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def photos(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rows = manifest_rows()
    for row in rows:
        shape, colour = row["image"].removesuffix(".png").split("-")[2], row["caption"].split()[1]
        (root / row["image"]).write_bytes(png(shape_image(shape, colour)))
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(r[h] for h in header) for r in rows]
    (root / "photos.csv").write_text("\n".join(lines) + "\n")
    index_folder(tiny_model, root / "photos.csv", root / "store", root / "index")
    return root, {r["image"]: r for r in rows}


@pytest.fixture(scope="module")
def served(photos, tiny_model, tiny_checkpoint, tmp_path_factory):
    from service.core.config import Settings
    from service.main import create_app

    root, rows = photos
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    keys = {
        "alpha": add_key(keys_file, ["alpha"], ["search"])[0],
        "beta": add_key(keys_file, ["beta"], ["search"])[0],
        "all": add_key(keys_file, ["*"], ["search"])[0],
    }
    settings = Settings(
        checkpoint=tiny_checkpoint, index=root / "index", store=root / "store",
        keys_file=keys_file, batch_wait_ms=2.0,
    )  # fmt: skip
    with TestClient(create_app(settings, model=tiny_model)) as client:
        yield client, keys, rows


def search(client, key, **body):
    body.setdefault("query", "a red circle")
    body.setdefault("top_k", 50)
    return client.post("/search", json=body, headers={"Authorization": f"Bearer {key}"})


def test_where_sort_and_facets_answer_like_the_manifest(served):
    client, keys, rows = served
    everything = search(client, keys["all"], facets=["album", "collection", "taken_at:year"])
    assert everything.status_code == 200, everything.text
    body = everything.json()
    hits = body["hits"]
    assert body["matches"] == len(hits) == len(rows)  # every photo shares a word with the query
    assert body["facets"]["album"] == dict(
        sorted(Counter(r["album"] for r in rows.values()).items(), key=lambda kv: (-kv[1], kv[0]))
    )
    assert body["facets"]["taken_at:year"] == dict(
        sorted(Counter(r["taken_at"][:4] for r in rows.values()).items(),
               key=lambda kv: (-kv[1], kv[0]))
    )  # fmt: skip
    assert all(h["metadata"]["album"] == rows[h["id"]]["album"] for h in hits)

    trip = search(client, keys["all"], where={"album": "Trip"}, facets=["album"]).json()
    assert {h["id"] for h in trip["hits"]} == {i for i, r in rows.items() if r["album"] == "Trip"}
    assert trip["facets"] == {"album": {"Trip": len(trip["hits"])}}

    newest = search(client, keys["all"], sort="-taken_at", top_k=5).json()
    pages = (
        newest["hits"]
        + search(client, keys["all"], sort="-taken_at", top_k=5, offset=5).json()["hits"]
    )
    from indexer.fields.where import epoch_seconds

    times = [epoch_seconds(rows[h["id"]]["taken_at"]) for h in pages]
    assert times == sorted(times, reverse=True) and len({h["id"] for h in pages}) == 10
    expected = sorted(rows.values(), key=lambda r: -epoch_seconds(r["taken_at"]))[:10]
    assert times == [epoch_seconds(r["taken_at"]) for r in expected]

    ranged = search(
        client, keys["all"], where={"taken_at": {"gte": "2013-01-01", "lt": "2015-01-01"}}
    ).json()
    assert {h["id"] for h in ranged["hits"]} == {
        i for i, r in rows.items()
        if 1356998400 <= epoch_seconds(r["taken_at"]) < 1420070400
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"where": {"albun": "Trip"}}, "albun", "unknown field 'albun'"),
        ({"where": {"album": {"gte": 2}}}, "album", "ranges apply to"),
        ({"where": {"taken_at": {"gte": "soon"}}}, "taken_at", "not an ISO 8601"),
        ({"sort": "-caption"}, "sort", "unknown field 'caption'"),
        ({"facets": ["taken_at"]}, "facets", "taken_at:year"),
    ],
)
def test_a_wrong_condition_is_a_422_naming_the_field(served, body, field, message):
    client, keys, _ = served
    response = search(client, keys["all"], **body)
    assert response.status_code == 422
    error = response.json()
    assert message in error["detail"] and field in error["errors"][0]["loc"], error


def test_a_collection_key_sees_only_its_collection_everywhere(served):
    client, keys, rows = served
    alpha = {i for i, r in rows.items() if r["collection"] == "alpha"}
    beta_image = next(i for i, r in rows.items() if r["collection"] == "beta")
    for where in (None, {"collection": "beta"}, {"album": "Trip"}):
        body = search(client, keys["alpha"], where=where, facets=["collection"]).json()
        assert {h["id"] for h in body["hits"]} <= alpha
        assert set(body["facets"]["collection"]) <= {"alpha"}
    assert {h["id"] for h in search(client, keys["alpha"]).json()["hits"]} == alpha
    image_query = client.post(
        "/search/image",
        files={"file": ("q.png", png(shape_image("circle", "red")), "image/png")},
        data={"top_k": "50", "facets": "collection"},
        headers={"X-API-Key": keys["alpha"]},
    )
    assert image_query.status_code == 200, image_query.text
    assert {h["id"] for h in image_query.json()["hits"]} == alpha

    header = {"Authorization": f"Bearer {keys['alpha']}"}
    for path, method, kwargs in [
        ("/images/{}", "GET", {}),
        ("/thumbnails/{}", "GET", {}),
        ("/explain/{}/heatmap.png?word=red", "GET", {}),
        ("/explain", "POST", {"json": {"query": "red", "image_id": "{}"}}),
    ]:

        def call(image_id, path=path, method=method, kwargs=kwargs):
            args = {
                k: {**v, "image_id": image_id} if isinstance(v, dict) else v
                for k, v in kwargs.items()
            }
            return client.request(method, path.format(image_id), headers=header, **args)

        hidden, missing = call(beta_image), call("no-such-image.png")
        assert hidden.status_code == missing.status_code == 404, path
        assert hidden.json() == _swap(missing.json(), "no-such-image.png", beta_image), path
        own = next(iter(alpha))
        assert call(own).status_code == 200, path
    # a key for every collection sees that image
    every = {"X-API-Key": keys["all"]}
    assert client.get(f"/thumbnails/{beta_image}", headers=every).status_code == 200


def _swap(value, old: str, new: str):
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value


def test_no_key_gets_401_and_fields_list_the_metadata(served):
    client, keys, _ = served
    assert client.post("/search", json={"query": "red"}).status_code == 401
    assert client.get("/fields").status_code == 401
    fields = client.get("/fields", headers={"X-API-Key": keys["beta"]}).json()["fields"]
    assert fields["album"]["type"] == "keyword" and fields["taken_at"]["type"] == "datetime"
    assert fields["collection"] == {"type": "keyword", "source": "collection"}
