"""The web UI in headless Chromium against the stand-in service of ``tests/ui_support.py`` (the
real page, canned answers, a log of the requests the page sends): field filters, sort, facet
counts, the API-key form, and controls that follow the service's fields.

Skipped where Debian's ``chromium`` is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import pytest

from bench.live import CHROMIUM, IMAGE_LOADED
from tests.ui_support import DIALOG_OPEN, FACETS, RECORDS, enter_key, serve_stub

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless UI test needs Chromium (apt-get install chromium)"
)


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

    enter_key(b, "wrong-key")  # refused: asked again, saying so
    b.wait_for(
        f"{DIALOG_OPEN} && document.getElementById('key-message').textContent.includes('refused')"
    )
    assert stub.log[-1]["authorization"] == "Bearer wrong-key"
    assert b.js("sessionStorage.getItem('lexvla.apiKey')") is None

    enter_key(b, "right-key")
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
    enter_key(b, "new-key")
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
