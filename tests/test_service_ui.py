"""The web UI in headless Chromium, driven over the DevTools protocol against a live server.

Skipped where Debian's ``chromium`` is not installed (``apt-get install chromium``). The
README's picture is made from the demo by ``bench/screenshot.py``, with the same client
(``bench/live.py``).
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.live import CHROMIUM, IMAGE_LOADED, Browser

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless UI test needs Chromium (apt-get install chromium)"
)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def _not_blank(image: Image.Image) -> None:
    pixels = np.asarray(image, dtype=np.float32)
    colours = len(set(image.resize((350, 225)).getdata()))
    assert pixels.std() > 20 and colours > 200, (pixels.std(), colours)


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
    sizes = b.js(
        "[...document.querySelectorAll('#results .card')[0].querySelectorAll('.chip')]"
        ".map(c => parseFloat(c.style.fontSize))"
    )
    assert len(sizes) == 8 and sizes == sorted(sizes, reverse=True)  # sized by contribution
    assert "q=a+red+circle" in b.js("location.hash")

    # click the first result: word cloud, matched words, heat map of the top word
    first = b.js("document.querySelector('#results .card').dataset.id")
    b.js("document.querySelector('#results .card').click()")
    b.wait_for("document.querySelectorAll('#matched .chip').length > 0")
    assert b.js("document.getElementById('detail').hidden") is False
    assert b.js("document.querySelectorAll('#cloud span').length") == 40
    b.wait_for(f"{IMAGE_LOADED}(document.getElementById('heatmap'))")
    top_word = b.js("document.querySelector('#matched .chip.active').dataset.word")
    assert f"open={first}" in b.js("decodeURIComponent(location.hash)")

    # choose another word: the heat map follows
    second = b.js("document.querySelectorAll('#matched .chip')[1].dataset.word")
    assert second != top_word
    b.js("document.querySelectorAll('#matched .chip')[1].click()")
    b.wait_for(
        f"document.getElementById('heatmap').src.includes('word=' + encodeURIComponent({json.dumps(second)}))"
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
    b.call(
        "Page.navigate", url=live_server.url + "/#q=" + f"a red circle -{word}".replace(" ", "+")
    )
    b.wait_for("document.body && document.body.dataset.ready === 'true'")
    chip = f"document.querySelector('#filters .chip[data-token=\"-{word}\"]')"
    b.wait_for(f"{chip} && !{chip}.classList.contains('off')")
    assert b.js("document.getElementById('filters').hidden") is False
    assert b.js(f"{chip}.getAttribute('aria-pressed')") == "true"
    filtered = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
    b.js(f"{chip}.click()")  # off: the query loses -word, the chip stays, struck through
    b.wait_for(f"{chip} && {chip}.classList.contains('off')")
    assert b.js("document.getElementById('query').value") == "a red circle"
    assert f"-{word}" in b.js("decodeURIComponent(location.hash)")  # kept as off=...
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
    b.open_ui(live_server.url + "/#q=a+red+circle&bind=1")
    b.wait_for(f"document.querySelectorAll('#results .card').length === {len(bound)}")
    assert b.js("document.getElementById('bind').checked") is True
    cards = b.js("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
    assert cards == [h["id"] for h in bound]
    shown = b.js("document.querySelector('#results .card .bound').textContent")
    assert f"together {bound[0]['bound_score']:.3f}" in shown
    b.js("document.getElementById('bind').click()")  # off, then search again
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for("!decodeURIComponent(location.hash).includes('bind=1')")
    b.wait_for("document.querySelector('#results .card .bound') === null")
