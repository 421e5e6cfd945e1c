"""Under load: micro-batching and its cache, load shedding (429), atomic index hot swap."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.core.metrics import Metrics
from service.core.middleware import ConcurrencyLimitMiddleware
from service.search.batcher import MicroBatcher


# --- the micro-batcher on its own -----------------------------------------------------------------
class FakeEncoder:
    def __init__(self, delay: float = 0.01, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return [t.upper() for t in texts]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_concurrent_texts_share_model_calls():
    encoder = FakeEncoder(delay=0.02)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(encoder, pool, max_batch=8, max_wait_ms=5)
            batcher.start()
            texts = [f"text {i}" for i in range(20)]
            results = await asyncio.gather(*(batcher.encode(t) for t in texts))
            await batcher.stop()
        return texts, results

    texts, results = _run(main())
    assert results == [t.upper() for t in texts]
    assert sorted(t for b in encoder.batches for t in b) == sorted(texts)  # each encoded once
    assert max(len(b) for b in encoder.batches) == 8 and len(encoder.batches) <= 5


def test_identical_texts_coalesce_and_results_are_cached():
    encoder = FakeEncoder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(encoder, pool, max_batch=4, max_wait_ms=2, cache_size=2)
            batcher.start()
            same = await asyncio.gather(*(batcher.encode("dog") for _ in range(10)))
            again = await batcher.encode("dog")  # from the cache
            await batcher.encode("cat")
            await batcher.encode("cow")  # evicts "dog" (capacity 2)
            await batcher.encode("dog")
            await batcher.stop()
        return same, again

    same, again = _run(main())
    assert same == ["DOG"] * 10 and again == "DOG"
    assert [t for b in encoder.batches for t in b] == ["dog", "cat", "cow", "dog"]


def test_a_failed_batch_fails_its_waiters_only():
    encoder = FakeEncoder(fail_on="bad")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(encoder, pool, max_batch=8, max_wait_ms=20)
            batcher.start()
            results = await asyncio.gather(
                batcher.encode("bad"), batcher.encode("good"), return_exceptions=True
            )
            later = await batcher.encode("fine")  # the collector survived
            await batcher.stop()
        return results, later

    results, later = _run(main())
    assert all(isinstance(r, ValueError) for r in results) and later == "FINE"


def test_a_cancelled_waiter_does_not_cancel_the_shared_encoding():
    encoder = FakeEncoder(delay=0.05)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(encoder, pool, max_batch=8, max_wait_ms=1)
            batcher.start()
            first = asyncio.create_task(batcher.encode("dog"))
            second = asyncio.create_task(batcher.encode("dog"))
            await asyncio.sleep(0.01)
            first.cancel()  # a client that went away
            result = await second
            await batcher.stop()
        return result

    assert _run(main()) == "DOG"


def test_the_apps_queries_are_micro_batched(service_app, tiny_model):
    """Concurrent /search requests through the real app share model calls and stay exact."""
    app = service_app
    batcher = app.state.service.pipeline.batcher
    queries = [f"a {c} {s} number {i}" for i, (c, s) in enumerate(
        (c, s) for c in ("red", "blue", "green", "brown") for s in ("circle", "square", "cross")
    )]  # fmt: skip

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            before = batcher.batches
            responses = await asyncio.gather(
                *(client.post("/search", json={"query": q, "top_k": 2, "query_words_limit": None})
                  for q in queries)
            )  # fmt: skip
            return responses, batcher.batches - before

    # the app's loop lives in the TestClient's portal thread: run there so the batcher is shared
    responses, batches = app.state.test_client.portal.call(main)
    assert all(r.status_code == 200 for r in responses)
    assert batches < len(queries)
    rows = tiny_model.sparsify(tiny_model.encode_texts(queries))
    for n, r in enumerate(responses):  # batching never changes a query's vector
        got = {w["word"]: w["weight"] for w in r.json()["query_words"]}
        row = rows[n]
        expected = {
            tiny_model.vocabulary.words[i]: float(w)
            for i, w in zip(row.indices, row.data, strict=True)
        }
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k]) < 1e-5 for k in got)


# --- load shedding ----------------------------------------------------------------------------
def test_requests_beyond_the_limit_get_429_with_retry_after():
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return PlainTextResponse("done")

    async def fast(request):
        return PlainTextResponse("ok")

    metrics = Metrics()
    app = Starlette(routes=[Route("/slow", slow), Route("/healthz", fast)])
    limited = ConcurrencyLimitMiddleware(app, limit=2, retry_after_s=3, metrics=metrics)

    async def main():
        transport = httpx.ASGITransport(app=limited)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
            for _ in range(100):  # bounded wait until both are in flight
                if limited.in_flight == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await client.get("/slow")
            health = await client.get("/healthz")  # never shed
            gate.set()
            done = await asyncio.gather(*held)
            after = await client.get("/slow")
        return refused, health, done, after

    refused, health, done, after = _run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    assert "2 requests in flight (limit 2" in refused.json()["detail"]
    assert health.status_code == 200
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert limited.in_flight == 0
    assert "lexvla_rejected_total 1.0" in metrics.render().decode()


def test_a_slot_is_free_once_the_answer_is_sent():
    """A client that sends its next request as soon as it has its answer is never refused, even
    while the route still runs its clean-up (here: waits after the last body chunk)."""
    gate = asyncio.Event()
    answered = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        if scope["path"] == "/cleanup":
            await gate.wait()  # e.g. a background task, after the answer

    limited = ConcurrencyLimitMiddleware(app, limit=1, retry_after_s=1, metrics=Metrics())

    def request(path: str, statuses: list[int]):
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            if message["type"] == "http.response.body":
                answered.set()

        scope = {"type": "http", "path": path, "method": "GET", "headers": []}
        return limited(scope, receive, send)

    async def main():
        first: list[int] = []
        running = asyncio.create_task(request("/cleanup", first))
        await asyncio.wait_for(answered.wait(), 30)
        in_flight_after_answer = limited.in_flight
        second: list[int] = []
        await request("/next", second)  # the same client's next request
        gate.set()
        await running
        return first, in_flight_after_answer, second

    first, in_flight_after_answer, second = _run(main())
    assert first == [200] and in_flight_after_answer == 0 and second == [200]
    assert limited.in_flight == 0


# --- index hot swap -----------------------------------------------------------------------------


@contextlib.contextmanager
def held_in_the_model(state):
    """Hold every query that reaches the model until ``release`` is set; ``entered`` is set
    when one arrives."""
    release, entered = threading.Event(), threading.Event()
    encode = state.pipeline.batcher.encode_batch

    def held_encode(texts):
        entered.set()
        release.wait(10)
        return encode(texts)

    state.pipeline.batcher.encode_batch = held_encode
    try:
        yield entered, release
    finally:
        release.set()
        state.pipeline.batcher.encode_batch = encode


def test_reload_swaps_atomically_and_in_flight_requests_finish_on_the_old_version(
    tiny_model, service_corpus, service_settings, tmp_path
):
    from fastapi.testclient import TestClient
    from service_fixtures import index_folder, write_images

    from service.main import create_app

    # a private copy of the corpus, so the shared one stays at v0001
    root = tmp_path / "corpus"
    shutil.copytree(service_corpus.root, root)
    settings = service_settings.model_copy(  # the reload, not the follower, swaps here
        update={"index": root / "index", "store": root / "store", "index_refresh_s": 60}
    )
    app = create_app(settings, model=tiny_model)
    with TestClient(app) as client:
        state = app.state.service
        before = client.post("/search", json={"query": "a red circle", "top_k": 50}).json()
        assert before["index_version"] == "v0001"
        # the indexing job adds images and publishes v0002 while the service runs
        new_ids = write_images(root / "images", n_extra=2, start=100)
        index_folder(tiny_model, root / "images", root / "store", root / "index")

        # a request that is inside the model when the swap happens
        with held_in_the_model(state) as (entered, release), ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                client.post, "/search", json={"query": "a green triangle", "top_k": 50}
            )
            assert entered.wait(10)
            swap = client.post("/admin/reload", headers={"Authorization": "Bearer test-key"})
            release.set()
            in_flight = pending.result(timeout=30)

        assert swap.status_code == 200, swap.text
        # the new version was frozen out of full collections too (settings.gc_freeze)
        assert not any(o is state.holder.current for o in gc.get_objects())
        body = swap.json()
        assert [p["index_version"] for p in body.pop("processes")] == ["v0002"]
        assert body == {
            "previous": "v0001", "current": "v0002", "engine": "compact",
            "images": len(service_corpus.ids) + 2,
        }  # fmt: skip
        old = in_flight.json()
        assert old["index_version"] == "v0001"
        assert not set(new_ids) & {h["id"] for h in old["hits"]}
        after = client.post("/search", json={"query": "a green triangle", "top_k": 50}).json()
        assert after["index_version"] == "v0002"
        assert set(new_ids) <= {h["id"] for h in after["hits"]}
        assert client.get("/readyz").json()["index_version"] == "v0002"
        # an explicit older version can be served again (rollback)
        back = client.post(
            "/admin/reload", json={"version": "v0001"}, headers={"X-API-Key": "test-key"}
        )
        assert back.json()["current"] == "v0001"


# --- thread priorities ---------------------------------------------------------------------------
def _in_a_new_thread(probe):
    seen = []
    thread = threading.Thread(target=lambda: seen.append(probe()))
    thread.start()
    thread.join()
    return seen[0]


def _seen_by_the_service_threads(tiny_model, settings, probe) -> tuple:
    """``probe()`` in the event loop's thread, a search thread, the model thread, and a thread
    that a search thread starts, of a service started with ``settings``."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    app = create_app(settings, model=tiny_model)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        state = app.state.service
        loop = client.portal.call(probe)  # a plain function runs in the loop's thread
        search = state.search_executor.submit(probe).result()
        model = state.model_executor.submit(probe).result()
        child = state.search_executor.submit(_in_a_new_thread, probe).result()
    return loop, search, model, child


def test_search_and_model_threads_run_below_the_event_loop(tiny_model, service_settings):
    """LEXVLA_WORKER_NICE: the search and model threads (and threads they start) run that many
    nice levels below the event loop thread; 0 leaves them level (Linux: nice is per thread)."""
    import os

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    for increment in (7, 0):
        settings = service_settings.model_copy(update={"worker_nice": increment})
        loop, *pools = _seen_by_the_service_threads(tiny_model, settings, nice)
        assert pools == [min(19, loop + increment)] * 3, increment


def test_the_app_sheds_outside_its_middleware_and_records_its_429s(tiny_model, service_settings):
    """The limit is the outermost layer of the app (service.main.SheddingApp): with its one
    slot taken, a search is refused at once; health stays served; the 429 is counted and timed
    in the request metrics, and the slot comes back."""
    from fastapi.testclient import TestClient

    from service.core.middleware import ConcurrencyLimitMiddleware
    from service.main import create_app

    settings = service_settings.model_copy(update={"max_concurrency": 1, "retry_after_s": 2})
    app = create_app(settings, model=tiny_model)
    with TestClient(app) as client:
        assert isinstance(app.middleware_stack, ConcurrencyLimitMiddleware)
        state = app.state.service
        with held_in_the_model(state) as (entered, release), ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/search", json={"query": "a red circle"})
            assert entered.wait(10)
            refused = client.post("/search", json={"query": "a blue square"})
            health = client.get("/healthz")
            release.set()
            held = pending.result(timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert "limit 1" in refused.json()["detail"]
        assert health.status_code == 200 and held.status_code == 200
        text = client.get("/metrics").text
        assert "lexvla_rejected_total 1.0" in text
        assert 'seconds_count{method="POST",route="unmatched",status="429"} 1.0' in text
        assert client.post("/search", json={"query": "a blue square"}).status_code == 200
