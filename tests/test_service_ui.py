"""The web UI in headless Chromium, driven over the DevTools protocol against a live server.

Skipped where Debian's ``chromium`` is not installed (``apt-get install chromium``). The
README's picture is made from the demo by ``bench/screenshot.py``, with this module's client.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless UI test needs Chromium (apt-get install chromium)"
)


class Browser:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate, click files, screenshot."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:  # events are skipped; the reply carries our id
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {expression}")

    def open_ui(self, url: str) -> None:
        """The UI at ``url`` in a 1400 x 900 viewport (the README's screenshot), once ready."""
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.ready === 'true'")

    def screenshot(self) -> Image.Image:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


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


IMAGE_LOADED = "(img => img && img.complete && img.naturalWidth > 0)"


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
