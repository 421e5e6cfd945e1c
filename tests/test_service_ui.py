"""The web UI in headless Chromium, driven over the DevTools protocol against the service itself.

Skipped where Debian's ``chromium`` is not installed (``apt-get install chromium``). The
DevTools client is ``bench/live.py``'s (``bench/screenshot.py`` makes the README's picture with
it); ``tests/test_service_ui_stub.py`` drives the same page against a stand-in service.
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
from tests.ui_support import DIALOG_OPEN, enter_key

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless UI test needs Chromium (apt-get install chromium)"
)


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
    enter_key(b, key)
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
