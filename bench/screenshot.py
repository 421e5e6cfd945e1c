"""The README's screenshot (docs/ui.png) from a finished ``lexvla demo`` work folder.

    python bench/screenshot.py [--workdir ~/.cache/lexvla/demo] [--out docs/ui.png]

Serves the demo's index with ``python -m service`` on a free loopback port, opens the UI in
headless Chromium (Debian's ``chromium``; the DevTools client of ``bench/live.py``),
searches "a red circle" with the *together* box ticked (``bind``; ``--no-bind``: without), opens
the first result and shows the heat map of ``--word`` (default
``circle``), then saves a 1400 x 900 screenshot. Needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.live import IMAGE_LOADED, Browser, free_port, stop, wait_ready  # noqa: E402
from lexvla.demo import default_workdir  # noqa: E402
from training.checkpoints import latest_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=default_workdir())
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "ui.png")
    ap.add_argument("--query", default="a red circle")
    ap.add_argument("--word", default="circle", help="the word whose heat map is shown")
    ap.add_argument(
        "--no-bind", action="store_true", help="leave the UI's 'together' box (bind) unticked"
    )
    args = ap.parse_args()
    checkpoint = latest_checkpoint(args.workdir / "run")
    if checkpoint is None:
        raise SystemExit(f"no trained demo in {args.workdir}: run `lexvla demo --no-serve` first")
    port = free_port()
    env = {**os.environ, "LEXVLA_CHECKPOINT": str(checkpoint), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "service", "--index", str(args.workdir / "index"),
                 "--store", str(args.workdir / "store"), "--host", "127.0.0.1",
                 "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        browser = None
        try:
            wait_ready(url.rstrip("/"), server, log)
            browser = Browser(Path(tmp) / "profile")
            shoot(browser, url, args.query, args.word, args.out, bind=not args.no_bind)
        finally:
            if browser is not None:
                browser.close()
            stop(server)
    print(f"wrote {args.out}")
    return 0


def shoot(b: Browser, url: str, query: str, word: str, out: Path, bind: bool = True) -> None:
    b.open_ui(url)
    b.js(f"document.getElementById('query').value = {json.dumps(query)}")
    b.js(f"document.getElementById('bind').checked = {json.dumps(bind)}")
    b.js("document.getElementById('search-form').requestSubmit()")
    b.wait_for("document.querySelectorAll('#results .card').length")
    b.wait_for(
        f"[...document.querySelectorAll('#results .card img')].every(i => {IMAGE_LOADED}(i))"
    )
    b.js("document.querySelector('#results .card').click()")
    b.wait_for("document.querySelectorAll('#matched .chip').length > 0")
    chip = f"document.querySelector('#matched .chip[data-word=\"{word}\"]')"
    if b.js(f"!!{chip}"):
        b.js(f"{chip}.click()")
        b.wait_for(f"document.getElementById('heatmap').src.includes('word={word}')")
    b.wait_for(f"{IMAGE_LOADED}(document.getElementById('heatmap'))")
    b.screenshot().save(out)


if __name__ == "__main__":
    sys.exit(main())
