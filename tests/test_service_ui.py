"""The web UI in headless Chromium, driven over the DevTools protocol against a live server.

Skipped where Debian's ``chromium`` is not installed (``apt-get install chromium``). The
DevTools client is ``bench/live.py``'s (``bench/screenshot.py`` makes the README's picture with
it). The tests of field filters, sort and facet counts, and the first API-key test, run against
the stand-in service of ``tests/ui_support.py`` (the real page, canned answers, a log of the
requests the page sends); the others run against the service itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.live import CHROMIUM, IMAGE_LOADED, Browser, free_port, stop, wait_ready
from tests.service_fixtures import REPO
from tests.ui_support import CATCH_ERRORS, FACETS, RECORDS, serve_stub

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless UI test needs Chromium (apt-get install chromium)"
)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        b.call("Page.enable")
        b.call("Page.addScriptToEvaluateOnNewDocument", source=CATCH_ERRORS)
        yield b
        assert b.js("window.pageErrors") == []  # no script error on the last page
    finally:
        b.close()


def _not_blank(image: Image.Image) -> None:
    pixels = np.asarray(image, dtype=np.float32)
    colours = len(set(image.resize((350, 225)).getdata()))
    assert pixels.std() > 20 and colours > 200, (pixels.std(), colours)


def test_a_shared_url_filters_by_album_on_the_real_service(browser, live_server):
    """A bookmarked search with a filter runs as it was: only that album's images, and the
    album's facet count is what the service counted."""
    b = browser
    b.open_ui(live_server.url + "/?q=a+red+circle&album=more")
    albums = [r for r in live_server.corpus.ids if r.startswith("more/")]
    assert b.wait_for("document.querySelectorAll('#results .card').length") == len(albums)
    ids = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id || '')")
    assert all(i in albums for i in ids if i), ids
    assert f"of {len(albums)}" in b.js("document.getElementById('status').textContent")


def test_search_explain_heatmap_and_image_search_in_chromium(browser, live_server):
    b = browser
    b.open_ui(live_server.url + "/")

    # type a query and submit it, as a user would
    b.js("document.getElementById('query').value = 'a red circle'")
    b.js("document.getElementById('search-form').requestSubmit()")
    count = b.wait_for("document.querySelectorAll('#results .card').length")
    assert count == len(live_server.corpus.ids)  # 12 per page, fewer images than that
    b.wait_for(
        f"[...document.querySelectorAll('#results .card img')].every(i => {IMAGE_LOADED}(i))"
    )
    assert "Results 1–" in b.js("document.getElementById('status').textContent")
    # the service lists its fields: the filter bar shows, and the facet counts of every match
    assert b.js("document.getElementById('filter-form').hidden") is False
    b.wait_for("!document.getElementById('facets').hidden")
    assert "default" in b.js("document.getElementById('facets').textContent")  # collection
    sizes = b.js(
        "[...document.querySelectorAll('#results .card')[0].querySelectorAll('.chip')]"
        ".map(c => parseFloat(c.style.fontSize))"
    )
    assert len(sizes) == 8 and sizes == sorted(sizes, reverse=True)  # sized by contribution
    assert "q=a+red+circle" in b.js("location.search")

    # click the first result: word cloud, matched words, heat map of the top word
    first = b.js("document.querySelector('#results .card').dataset.id")
    b.js("document.querySelector('#results .card').click()")
    b.wait_for("document.querySelectorAll('#matched .chip').length > 0")
    assert b.js("document.getElementById('detail').hidden") is False
    assert b.js("document.querySelectorAll('#cloud span').length") == 40
    b.wait_for(f"{IMAGE_LOADED}(document.getElementById('heatmap'))")
    top_word = b.js("document.querySelector('#matched .chip.active').dataset.word")
    assert f"open={first}" in b.js("decodeURIComponent(location.search)")

    # choose another word: the heat map follows
    second = b.js("document.querySelectorAll('#matched .chip')[1].dataset.word")
    assert second != top_word
    b.js("document.querySelectorAll('#matched .chip')[1].click()")
    b.wait_for(
        f"document.getElementById('heatmap').dataset.src.includes('word=' + encodeURIComponent({json.dumps(second)}))"
        f" && {IMAGE_LOADED}(document.getElementById('heatmap'))"
    )
    shot = b.screenshot()
    _not_blank(shot)
    assert shot.size == (1400, 900)

    # search by uploading an image
    b.js("document.getElementById('close').click()")
    root = b.call("DOM.getDocument")["root"]["nodeId"]
    node = b.call("DOM.querySelector", nodeId=root, selector="#upload")["nodeId"]
    upload = live_server.corpus.images / "green-triangle.png"
    b.call("DOM.setFileInputFiles", files=[str(upload)], nodeId=node)
    b.wait_for("document.getElementById('status').textContent.includes('for “green-triangle.png”')")
    assert b.js("document.querySelector('#results .card').dataset.id") == "green-triangle.png"


def test_filter_chips_switch_filters_off_and_on(browser, live_server):
    b = browser
    b.call("Page.enable")
    base = httpx.post(live_server.url + "/search", json={"query": "a red circle", "top_k": 50})
    hits = base.json()["hits"]
    # a word the top hit matches strongly enough to be among its own: excluding it drops that hit
    word = next(m["word"] for m in hits[0]["matched"] if m["word"].isalpha())
    # a link of the older #q=... form opens that search, and becomes ?q=...
    b.call(
        "Page.navigate", url=live_server.url + "/#q=" + f"a red circle -{word}".replace(" ", "+")
    )
    b.wait_for("document.body && document.body.dataset.ready === 'true'")
    assert b.js("location.hash") == ""
    assert b.js("new URLSearchParams(location.search).get('q')") == f"a red circle -{word}"
    chip = f"document.querySelector('#filters .chip[data-token=\"-{word}\"]')"
    b.wait_for(f"{chip} && !{chip}.classList.contains('off')")
    assert b.js("document.getElementById('filters').hidden") is False
    assert b.js(f"{chip}.getAttribute('aria-pressed')") == "true"
    filtered = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
    b.js(f"{chip}.click()")  # off: the query loses -word, the chip stays, struck through
    b.wait_for(f"{chip} && {chip}.classList.contains('off')")
    assert b.js("document.getElementById('query').value") == "a red circle"
    assert b.js("new URLSearchParams(location.search).get('off')") == f"-{word}"
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(hits[:12])}")
    b.js(f"{chip}.click()")  # on again
    b.wait_for(f"{chip} && !{chip}.classList.contains('off')")
    assert b.js("document.getElementById('query').value") == f"a red circle -{word}"
    again = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
    assert again == filtered


def test_together_checkbox_sends_bind_and_shows_where(browser, live_server):
    """The "together" box re-ranks by where the words are (``bind``): the cards follow the API's
    bound order and say how strongly the words meet; the choice lives in the URL."""
    b = browser
    bound = httpx.post(
        live_server.url + "/search", json={"query": "a red circle", "top_k": 12, "bind": True}
    ).json()["hits"]
    b.open_ui(live_server.url + "/?q=a+red+circle&bind=1")
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(bound)}")
    assert b.js("document.getElementById('bind').checked") is True
    cards = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
    assert cards == [h["id"] for h in bound]
    shown = b.js("document.querySelector('#results .card .bound').textContent")
    assert f"together {bound[0]['bound_score']:.3f}" in shown
    b.js("document.getElementById('bind').click()")  # off, then search again
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for("!location.search.includes('bind=1')")
    b.wait_for("document.querySelector('#results .card .bound') === null")


def _cards(b: Browser) -> list[str]:
    return b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")


def test_back_and_forward_restore_earlier_searches(browser, live_server):
    b = browser
    b.open_ui(live_server.url + "/")
    searched = {}
    for query, text in (("a red circle", "a red circle"), ("a circle -red", "a circle")):
        b.js(f"document.getElementById('query').value = {json.dumps(query)}")
        b.js("document.getElementById('search-form').requestSubmit()")
        b.wait_for(f"document.getElementById('status').textContent.includes('for “{text}”')")
        searched[query] = _cards(b)
    assert searched["a red circle"] != searched["a circle -red"]
    assert b.js("new URLSearchParams(location.search).get('q')") == "a circle -red"

    b.js("history.back()")
    b.wait_for("document.getElementById('status').textContent.includes('for “a red circle”')")
    assert b.js("document.getElementById('query').value") == "a red circle"
    assert b.js("new URLSearchParams(location.search).get('q')") == "a red circle"
    assert _cards(b) == searched["a red circle"]
    b.js("history.forward()")
    b.wait_for("document.getElementById('status').textContent.includes('for “a circle”')")
    assert _cards(b) == searched["a circle -red"]
    b.js("history.back()")
    b.js("history.back()")  # the page before any search: empty again
    b.wait_for("document.querySelectorAll('#results .card').length === 0")
    assert b.js("document.getElementById('query').value") == ""


@pytest.fixture
def stub():
    yield from serve_stub()


FACET_COUNTS = """Object.fromEntries([...document.querySelectorAll('#facets .facet-group')].map(g =>
  [g.dataset.facet, [...g.querySelectorAll('.facet')].map(f =>
    [f.dataset.value, Number(f.querySelector('.count').textContent), f.getAttribute('aria-pressed')])]))"""
CONTROLS = (
    "['from', 'to', 'album', 'collection', 'sort'].map(id => document.getElementById(id).value)"
)


def test_a_url_with_filters_and_sort_runs_that_search_and_facets_refine_it(browser, stub):
    b = browser
    b.open_ui(stub.url + "/?q=red+circle&album=Trip&from=2020-01-01&to=2020-12-31&sort=-taken_at")
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(RECORDS)}")
    (sent,) = [r["body"] for r in stub.requests("/search")]
    assert sent["query"] == "red circle"
    # "to" includes its whole day: taken_at before the next one
    assert sent["where"] == {"album": "Trip", "taken_at": {"gte": "2020-01-01", "lt": "2021-01-01"}}
    assert sent["sort"] == "-taken_at"
    assert sent["facets"] == ["album", "collection", "taken_at:year"]
    assert b.js(CONTROLS) == ["2020-01-01", "2020-12-31", "Trip", "", "-taken_at"]
    assert f"of {len(RECORDS)} for" in b.js("document.getElementById('status').textContent")

    # facet counts beside the results, most frequent first (years newest first); Trip is on
    counts = b.js(FACET_COUNTS)
    assert counts["album"] == [
        ["Trip", 2, "true"],
        ["Birthday", 1, "false"],
        ["Office", 1, "false"],
    ]
    assert counts["collection"] == [["family", 3, "false"], ["work", 1, "false"]]
    assert counts["taken_at:year"] == [
        ["2021", 2, "false"],
        ["2020", 1, "true"],
        ["2019", 1, "false"],
    ]
    assert {f: {v: n for v, n, _ in c} for f, c in counts.items()} == FACETS
    assert b.js("[...document.querySelectorAll('#collection option')].map(o => o.value)") == [
        "",
        "family",
        "work",
    ]

    # each card: the date as taken (wall clock, whatever its offset) and the album
    taken = b.js(
        "[...document.querySelectorAll('#results .card .taken')].map(t => "
        "[t.querySelector('time').getAttribute('datetime'), t.textContent])"
    )
    fmt = "new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short', timeZone: 'UTC'})"
    harbour = b.js(f"{fmt}.format(Date.UTC(2021, 5, 2, 18, 45))")  # 18:45 at +02:00, as shot
    assert taken[1] == ["2021-06-02T18:45:00+02:00", f"{harbour} · Trip"]
    assert (
        taken[2][0] == "2020-03-14"
        and "2020" in taken[2][1]
        and taken[2][1].endswith(" · Birthday")
    )
    assert "2021-06-01" not in taken[0][1] and "10:00" in taken[0][1]

    # click a year: that whole year, the album kept; the URL follows, as a new history entry
    b.js(
        'document.querySelector(\'[data-facet="taken_at:year"] .facet[data-value="2021"]\').click()'
    )
    b.wait_for(
        "document.querySelector('.facet[data-value=\"2021\"]')?.getAttribute('aria-pressed') === 'true'"
    )
    last = stub.requests("/search")[-1]["body"]
    assert last["where"] == {"album": "Trip", "taken_at": {"gte": "2021-01-01", "lt": "2022-01-01"}}
    params = "Object.fromEntries(new URLSearchParams(location.search))"
    assert b.js(params) == {
        "q": "red circle",
        "album": "Trip",
        "from": "2021-01-01",
        "to": "2021-12-31",
        "sort": "-taken_at",
    }
    # a control: the collection menu, filled from the facet counts
    b.js(
        "const s = document.getElementById('collection'); s.value = 'family';"
        "s.dispatchEvent(new Event('change', {bubbles: true}))"
    )
    b.wait_for("new URLSearchParams(location.search).get('collection') === 'family'")
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    assert stub.requests("/search")[-1]["body"]["where"]["collection"] == "family"
    # album facet clicked again: off
    b.js('document.querySelector(\'[data-facet="album"] .facet[data-value="Trip"]\').click()')
    b.wait_for("!new URLSearchParams(location.search).has('album')")
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    assert "album" not in stub.requests("/search")[-1]["body"]["where"]

    # back, three times: each earlier search again, with its filters in the controls
    b.js("history.back()")
    b.wait_for(
        "document.getElementById('collection').value === 'family' && "
        "document.getElementById('album').value === 'Trip'"
    )
    b.js("history.back()")
    b.wait_for("document.getElementById('collection').value === ''")
    b.js("history.back()")
    b.wait_for("document.getElementById('from').value === '2020-01-01'")
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    assert b.js(CONTROLS) == ["2020-01-01", "2020-12-31", "Trip", "", "-taken_at"]
    assert stub.requests("/search")[-1]["body"] == sent

    # a sort change from the menu: a search without where, sorted oldest first
    b.js("document.getElementById('clear-filters').click()")
    b.wait_for("location.search === '?q=red+circle'")
    b.js(
        "const t = document.getElementById('sort'); t.value = 'taken_at';"
        "t.dispatchEvent(new Event('change', {bubbles: true}))"
    )
    b.wait_for("new URLSearchParams(location.search).get('sort') === 'taken_at'")
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    last = stub.requests("/search")[-1]["body"]
    assert last["sort"] == "taken_at" and "where" not in last


DIALOG_OPEN = "document.getElementById('key-dialog')?.open"


def _enter_key(b: Browser, key: str) -> None:
    b.js(f"document.getElementById('key-input').value = {json.dumps(key)}")
    b.js("document.getElementById('key-form').requestSubmit()")


def test_a_401_asks_for_a_key_kept_for_the_tab_and_sent_with_every_request(browser, stub):
    b = browser
    stub.key = "right-key"
    b.call("Page.enable")
    b.call("Page.navigate", url=stub.url + "/?q=red+circle")
    b.wait_for(DIALOG_OPEN)  # the page's form, not window.prompt
    assert b.js("document.activeElement.id") == "key-input"
    assert stub.log[0]["authorization"] is None and "missing" not in b.js(
        "document.getElementById('key-message').textContent"
    )

    _enter_key(b, "wrong-key")  # refused: asked again, saying so
    b.wait_for(
        f"{DIALOG_OPEN} && document.getElementById('key-message').textContent.includes('refused')"
    )
    assert stub.log[-1]["authorization"] == "Bearer wrong-key"
    assert b.js("sessionStorage.getItem('lexvla.apiKey')") is None

    _enter_key(b, "right-key")
    b.wait_for("document.body.dataset.ready === 'true'")
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(RECORDS)}")
    b.wait_for(
        f"[...document.querySelectorAll('#results .card img')].every(i => {IMAGE_LOADED}(i))"
    )
    assert b.js(
        "[...document.querySelectorAll('#results .card img')].every(i => i.src.startsWith('blob:'))"
    )
    assert b.js("document.querySelectorAll('#facets .facet').length") > 0

    # the key stays in this tab's sessionStorage; not in localStorage, a cookie or the URL
    assert b.js("sessionStorage.getItem('lexvla.apiKey')") == "right-key"
    assert b.js("localStorage.length") == 0 and b.js("document.cookie") == ""
    assert "right-key" not in b.js("location.href")

    # explain and its heat map send it too
    b.js("document.querySelector('#results .card').click()")
    b.wait_for(f"{IMAGE_LOADED}(document.getElementById('heatmap'))")
    first = next(i for i, r in enumerate(stub.log) if r["authorization"] == "Bearer right-key")
    after = stub.log[first:]
    assert {r["path"].split("/")[1] for r in after} >= {"fields", "search", "thumbnails", "explain"}
    assert any(r["path"].endswith("/heatmap.png") for r in after)
    assert all(r["authorization"] == "Bearer right-key" for r in after)

    # the key is revoked: the next request asks again, and goes on with the new key
    stub.key = "new-key"
    b.js("document.getElementById('close').click()")
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for(
        f"{DIALOG_OPEN} && document.getElementById('key-message').textContent.includes('revoked')"
    )
    assert b.js("sessionStorage.getItem('lexvla.apiKey')") is None
    mark = len(stub.log)
    _enter_key(b, "new-key")
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    assert stub.requests("/search")[-1]["authorization"] == "Bearer new-key"
    assert all(r["authorization"] == "Bearer new-key" for r in stub.log[mark:])

    # cancelled: the page says what the service said, and asks again on the next search
    stub.key = "another-key"
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for(DIALOG_OPEN)
    b.js("document.getElementById('key-cancel').click()")
    b.wait_for("document.getElementById('status').classList.contains('error')")
    assert "wrong API key" in b.js("document.getElementById('status').textContent")
    assert b.js(DIALOG_OPEN) is False


@pytest.fixture
def keyed_server(live_server, tiny_checkpoint, tmp_path):
    """``python -m service`` over the live server's corpus with a keys file: every read needs a
    key. Yields (url, a key with the search right, the keys file)."""
    from service.core.keys import add_key

    keys = tmp_path / "keys.json"
    key, _ = add_key(keys, ["*"], ["search"], name="ui")
    port = free_port()
    env = {
        **os.environ,
        "LEXVLA_CHECKPOINT": str(tiny_checkpoint),
        "LEXVLA_STORE": str(live_server.corpus.store),
        "LEXVLA_KEYS_FILE": str(keys),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("LEXVLA_API_KEY", None)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--index", str(live_server.corpus.index),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url, key, keys
    finally:
        stop(process)


def test_the_key_form_opens_a_service_with_a_keys_file(browser, keyed_server):
    """The real service: its 401 opens the form; with the key, search, thumbnails (fetched with
    the header, shown through object URLs), explain and heat maps answer; a revoked key asks
    again."""
    from service.core.keys import read_keys, revoke_key

    url, key, keys = keyed_server
    b = browser
    b.call("Page.enable")
    b.call("Page.navigate", url=url + "/?q=a+red+circle")
    b.wait_for(DIALOG_OPEN)
    _enter_key(b, key)
    b.wait_for("document.getElementById('status').textContent.startsWith('Results')")
    b.wait_for(
        f"[...document.querySelectorAll('#results .card img')].every(i => {IMAGE_LOADED}(i))"
    )
    assert b.js("document.querySelector('#results .card img').src").startswith("blob:")
    b.js("document.querySelector('#results .card').click()")
    b.wait_for(f"{IMAGE_LOADED}(document.getElementById('heatmap'))")
    assert (
        b.js("sessionStorage.getItem('lexvla.apiKey')") == key and b.js("localStorage.length") == 0
    )

    revoke_key(keys, read_keys(keys)[0].id)
    deadline = time.monotonic() + 20  # the service re-reads its keys file within a second
    bearer = {"Authorization": f"Bearer {key}"}
    while httpx.get(url + "/thumbnails/red-circle.png", headers=bearer).status_code != 401:
        assert time.monotonic() < deadline, "the service did not see the key revoked"
        time.sleep(0.2)
    b.js("document.getElementById('close').click()")
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for(
        f"{DIALOG_OPEN} && document.getElementById('key-message').textContent.includes('revoked')"
    )


def test_the_controls_follow_the_fields_the_service_has(browser, stub):
    """An index with an album but no capture time: no date range, sort or year, and a link's
    date and sort are not sent (the service would refuse them)."""
    b = browser
    stub.fields = {"album": {"type": "keyword"}, "path": {"type": "keyword"}}
    b.open_ui(stub.url + "/?q=red+circle&album=Trip&from=2020-01-01&sort=-taken_at")
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(RECORDS)}")
    (sent,) = [r["body"] for r in stub.requests("/search")]
    assert sent["where"] == {"album": "Trip"} and "sort" not in sent
    assert sent["facets"] == ["album"]
    shown = b.js(
        "[...document.querySelectorAll('#filter-form label')]"
        ".filter(l => l.offsetParent !== null).map(l => l.textContent.trim().split(/\\s/)[0])"
    )
    assert shown == ["Album"]
    assert b.js(
        "[...document.querySelectorAll('#facets .facet-group')].map(g => g.dataset.facet)"
    ) == ["album"]
