"""Single-image writes through the API: uploads found, deletions gone, metadata changed, keys
checked, and a store ahead of its index caught up by the next write.

Two apps on one index directory stand for two workers: the one that writes serves the change at
once, the other within its refresh interval.
"""

from __future__ import annotations

import errno
import time

import pytest
from fastapi.testclient import TestClient

from indexer.engines import open_index
from indexer.live import LiveWriter, Upload
from indexer.store import CorpusStore
from service.core.keys import add_key
from tests.service_fixtures import build_corpus, png, shape_image

ADMIN = {"X-API-Key": "test-key"}


@pytest.fixture
def two_workers(tiny_model, tiny_checkpoint, tmp_path):
    from service.core.config import Settings
    from service.main import create_app

    corpus = build_corpus(tiny_model, tmp_path / "corpus", n_extra=2)
    keys_file = tmp_path / "keys.json"
    keys = {
        "search": add_key(keys_file, ["*"], ["search"])[0],
        "alpha": add_key(keys_file, ["alpha"], ["search", "write"])[0],
        "default": add_key(keys_file, ["default"], ["search", "write"])[0],
    }
    settings = Settings(
        checkpoint=tiny_checkpoint, index=corpus.index, store=corpus.store, api_key="test-key",
        keys_file=keys_file, batch_wait_ms=2.0, index_refresh_s=0.2,
    )  # fmt: skip
    with (
        TestClient(create_app(settings, model=tiny_model)) as first,
        TestClient(create_app(settings, model=tiny_model)) as second,
    ):
        yield first, second, keys, corpus


def upload(client, data, headers=ADMIN, **fields):
    files = [("file", ("p.png", data, "image/png"))]
    return client.post("/images", files=files, data=fields, headers=headers)


def image_search(client, data, headers=ADMIN):
    r = client.post(
        "/search/image", files={"file": ("q.png", data, "image/png")},
        data={"top_k": "50"}, headers=headers,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def eventually(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not seen within the refresh interval"
        time.sleep(0.1)


def test_an_upload_is_found_in_both_workers_and_a_delete_is_gone(two_workers):
    first, second, _, corpus = two_workers
    data = png(shape_image("triangle", "red", background=(10, 240, 240)))
    r = upload(first, data, id="new/star.png", metadata='{"album": "Trip", "tags": "x"}')
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["images"] == [{"id": "new/star.png", "status": "indexed", "reason": None}]
    assert image_search(first, data)[0] == "new/star.png"  # at once where it was written
    eventually(lambda: image_search(second, data)[0] == "new/star.png")
    hit = first.post("/search", json={"query": "star", "where": {"album": "Trip"}}, headers=ADMIN)
    assert [h["id"] for h in hit.json()["hits"]] == ["new/star.png"]
    assert first.get("/thumbnails/new/star.png", headers=ADMIN).status_code == 200

    again = upload(first, data, id="new/star.png")  # a retried upload replaces, never doubles
    assert again.status_code == 201
    with CorpusStore.open(corpus.store) as store:
        assert store.ids().count("new/star.png") == 1
        count = store.count
    assert open_index(corpus.index).count() == count

    gone = first.delete("/images/new/star.png", headers=ADMIN)
    assert gone.status_code == 204
    assert "new/star.png" not in image_search(first, data)
    eventually(lambda: "new/star.png" not in image_search(second, data))
    for client in (first, second):
        assert client.get("/thumbnails/new/star.png", headers=ADMIN).status_code == 404
        assert client.get("/images/new/star.png", headers=ADMIN).status_code == 404
    assert first.delete("/images/new/star.png", headers=ADMIN).status_code == 404


def test_a_metadata_change_is_visible_without_re_encoding(two_workers):
    first, second, _, corpus = two_workers
    target = corpus.ids[0]
    r = first.patch(f"/images/{target}", json={"metadata": {"album": "Holidays", "stars": 4}},
                    headers=ADMIN)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["album"] == "Holidays" and r.json()["stars"] == 4

    def found(client):
        body = {"query": "a circle", "where": {"album": "Holidays", "stars": {"gte": 3}}}
        r = client.post("/search", json=body, headers=ADMIN)
        # a worker still on the version before the change does not know 'stars' yet (422)
        return r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == [target]

    assert found(first)
    eventually(lambda: found(second))
    bad = first.patch(f"/images/{target}", json={"metadata": {"stars": "many"}}, headers=ADMIN)
    assert bad.status_code == 422 and "stars" in bad.json()["detail"]


def test_keys_need_the_write_right_for_the_collection(two_workers):
    first, _, keys, corpus = two_workers
    data = png(shape_image("triangle", "green"))
    before = open_index(corpus.index).count()
    search_only = upload(first, data, headers={"X-API-Key": keys["search"]})
    assert search_only.status_code == 403 and "no write right" in search_only.text
    assert upload(first, data, headers={}).status_code == 401
    other = upload(first, data, headers={"X-API-Key": keys["alpha"]}, collection="default")
    assert other.status_code == 403 and "collection 'default'" in other.text
    existing = corpus.ids[1]  # collection "default": alpha's key cannot see it
    alpha = {"X-API-Key": keys["alpha"]}
    missing = first.delete("/images/no-such.png", headers=alpha)
    hidden = first.delete(f"/images/{existing}", headers=alpha)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"] == missing.json()["detail"].replace("no-such.png", existing)
    patch = first.patch(f"/images/{existing}", json={"metadata": {"album": "x"}}, headers=alpha)
    assert patch.status_code == 404
    replace = upload(first, data, headers=alpha, id=existing, collection="alpha")
    assert replace.status_code == 404
    assert open_index(corpus.index).count() == before  # nothing changed
    own = upload(first, data, headers=alpha, collection="alpha", id="alpha/star.png")
    assert own.status_code == 201
    assert first.delete("/images/alpha/star.png", headers=alpha).status_code == 204


def test_bad_uploads_are_skipped_in_one_line_and_nothing_is_written(two_workers):
    first, _, _, corpus = two_workers
    before = open_index(corpus.index).count()
    r = upload(first, b"not an image at all", id="broken.png")
    assert r.status_code == 201
    (item,) = r.json()["images"]
    assert item["status"] == "skipped" and item["reason"].startswith("not_an_image: ")
    assert r.json()["index_version"] is None
    bad_meta = upload(first, png(shape_image("triangle", "red")), metadata="[1, 2]")
    assert bad_meta.status_code == 422 and "JSON object" in bad_meta.text
    assert open_index(corpus.index).count() == before


def test_a_full_disk_answers_507_and_changes_nothing(two_workers, monkeypatch):
    first, _, _, corpus = two_workers
    before = open_index(corpus.index).count()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CorpusStore, "append_shard", full)
    r = upload(first, png(shape_image("triangle", "blue")), id="full.png")
    assert r.status_code == 507 and "disk is full" in r.json()["detail"]
    assert open_index(corpus.index).count() == before


def test_writes_are_off_without_keys(tiny_model, tiny_checkpoint, tmp_path):
    from service.core.config import Settings
    from service.main import create_app

    corpus = build_corpus(tiny_model, tmp_path / "corpus")
    settings = Settings(checkpoint=tiny_checkpoint, index=corpus.index, store=corpus.store)
    with TestClient(create_app(settings, model=tiny_model)) as client:
        r = upload(client, png(shape_image("triangle", "red")), headers={})
        assert r.status_code == 403 and "writes are disabled" in r.text


def test_a_store_ahead_of_its_index_is_caught_up_by_the_next_write(tiny_model, tmp_path):
    corpus = build_corpus(tiny_model, tmp_path / "corpus")
    with CorpusStore.open(corpus.store) as store:
        writer = LiveWriter(store, corpus.index, max_pixels=10_000_000)
        first = writer.prepare(Upload(png(shape_image("triangle", "red")), id="a.png"))
        second = writer.prepare(Upload(png(shape_image("triangle", "blue")), id="b.png"))
        rows = tiny_model.sparsify(tiny_model.encode_pil([first.image]))
        # a crash after the store committed and before the version was published
        store.append_shard(["a.png"], rows, [first.info], [first.thumbnail])
        assert "a.png" not in set(open_index(corpus.index).fields.id_texts(
            range(len(open_index(corpus.index).fields))))  # fmt: skip
        rows_b = tiny_model.sparsify(tiny_model.encode_pil([second.image]))
        writer.add([second], rows_b)
        index = open_index(corpus.index)
        assert index.count() == store.count
        for image_id in ("a.png", "b.png"):
            assert index.vectors_of([image_id]).nnz > 0


def test_searches_during_writes_answer_without_errors(two_workers):
    import threading

    first, second, _, _ = two_workers
    statuses: list[int] = []
    stop = threading.Event()

    def searching(client):
        while not stop.is_set():
            r = client.post("/search", json={"query": "a red circle", "facets": ["album"]},
                            headers=ADMIN)  # fmt: skip
            statuses.append(r.status_code)

    threads = [threading.Thread(target=searching, args=(c,)) for c in (first, second) * 2]
    for t in threads:
        t.start()
    try:
        for n in range(6):
            data = png(shape_image("circle", "blue", background=(n * 40, 90, 200)))
            assert upload(first, data, id=f"during/{n}.png").status_code == 201
            if n % 2:
                assert first.delete(f"/images/during/{n - 1}.png", headers=ADMIN).status_code == 204
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


@pytest.mark.parametrize("engine", ["memory", "compact", "qdrant"])
def test_live_writes_on_every_engine_that_serves_them(tiny_model, tmp_path, engine):
    from indexer.build import build_index

    corpus = build_corpus(tiny_model, tmp_path / "corpus")
    index_dir = tmp_path / f"index-{engine}"
    with CorpusStore.open(corpus.store) as store:
        build_index(store, index_dir, engine)
        writer = LiveWriter(store, index_dir, max_pixels=10_000_000)
        added = writer.prepare(Upload(png(shape_image("circle", "red", background=(9, 9, 9))),
                                      id="live.png", metadata={"album": "Live"}))  # fmt: skip
        rows = tiny_model.sparsify(tiny_model.encode_pil([added.image]))
        writer.add([added], rows)
        index = open_index(index_dir)
        assert index.count() == store.count
        assert index.search(rows, 1)[0][0] == "live.png"
        assert index.fields.records(["live.png"])["live.png"]["album"] == "Live"
        index.close()
        assert writer.delete(corpus.ids[0])
        index = open_index(index_dir)
        assert index.count() == store.count
        assert corpus.ids[0] not in [i for i, _ in index.search(rows, 50)]
        index.close()


def test_a_batch_job_and_live_writes_lose_neither_sides_work(tiny_model, tmp_path):
    import threading

    from indexer.job import IndexJob
    from indexer.runner import run_index_job
    from tests.service_fixtures import write_images

    corpus = build_corpus(tiny_model, tmp_path / "corpus")
    batch = tmp_path / "batch"
    batch.mkdir()
    batch_ids = write_images(batch, n_extra=6, start=100)
    live_ids = [f"live/{n}.png" for n in range(5)]
    with CorpusStore.open(corpus.store) as store:
        writer = LiveWriter(store, corpus.index, max_pixels=10_000_000)

        def live() -> None:
            for n, image_id in enumerate(live_ids):
                item = writer.prepare(Upload(
                    png(shape_image("square", "green", background=(n * 50, 20, 20))), id=image_id
                ))  # fmt: skip
                writer.add([item], tiny_model.sparsify(tiny_model.encode_pil([item.image])))

        thread = threading.Thread(target=live)
        thread.start()
        job = IndexJob(source=str(batch), store=str(corpus.store), checkpoint="unused",
                       index=str(corpus.index), progress=False, batch_size=4, chunk_size=2)  # fmt: skip
        run_index_job(job, model=tiny_model)
        thread.join()
        assert writer.catch_up() is None  # the index already holds both sides' images
        stored = set(store.ids())
    index = open_index(corpus.index)
    held = set(index.fields.id_texts(range(len(index.fields))))
    assert set(live_ids) | {f"more/{i.split('/')[-1]}" for i in batch_ids} <= stored
    assert held == stored and index.count() == len(stored)
