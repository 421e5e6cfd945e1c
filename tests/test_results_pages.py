"""The results pages are generated from the benchmarks' JSON: regenerating one changes nothing
(so a page never says what its JSON does not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = {  # page -> the command that writes it (its --page argument replaced here)
    "docs/results-serving.md": [
        "bench/serve.py", "--page", "PAGE", "--from", "docs/results/serving-1m-modes.json",
        "--from", "docs/results/serving-1m-words.json",
    ],
    "docs/results-query-table.md": [
        "bench/query_table.py", "--page", "PAGE", "--from", "docs/results/query-table.json",
        "--demo-metrics", "docs/results/demo-metrics.json",
        "--serve-results", "docs/results/serve-table-words.json",
    ],
    "docs/results-live-writes.md": [
        "bench/writes.py", "--page", "PAGE", "--from", "docs/results/live-writes.json",
    ],
    "docs/results-live-adds.md": [
        "bench/live_adds.py", "--page", "PAGE", "--from", "docs/results/live-adds.json",
        "--from", "docs/results/live-adds-100k.json",
    ],
    "docs/results-filtered-search.md": [
        "bench/filtered_search.py", "--page", "PAGE", "--from", "docs/results/filtered-search.json",
    ],
    "docs/results-search-scaling.md": [
        "bench/search_scaling.py", "--page", "PAGE", "--from", "docs/results/search-10k.json",
        "--from", "docs/results/search-100k.json", "--from", "docs/results/search-1m.json",
        "--planner", "docs/results/compact-planner-100k.json",
        "--planner", "docs/results/compact-planner-1m.json",
    ],
    "docs/results-word-budgets.md": [
        "bench/word_budgets.py", "--page", "PAGE", "--from", "docs/results/word-budgets.json",
    ],
}  # fmt: skip


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_results_page_is_what_its_json_generates(page, tmp_path):
    out = tmp_path / "page.md"
    command = [str(out) if arg == "PAGE" else arg for arg in PAGES[page]]
    subprocess.run([sys.executable, *command], cwd=REPO, check=True, timeout=120)
    assert out.read_text() == (REPO / page).read_text()
