"""``lexvla search``: the command-line search scores and explains hits exactly as the service does."""

from __future__ import annotations

import json

import pytest

from indexer import search as search_cli
from lexvla import cli as lexvla_cli


def _cli_json(capsys, corpus, checkpoint, *extra: str) -> list[dict]:
    argv = ["--index", str(corpus.index), "--checkpoint", str(checkpoint),
            "--store", str(corpus.store), "--json", *extra]  # fmt: skip
    assert search_cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode", ["model", "words"])
def test_cli_hits_and_contributions_match_the_service(
    client, service_corpus, tiny_checkpoint, capsys, mode
):
    query = "a red circle"
    [result] = _cli_json(capsys, service_corpus, tiny_checkpoint, "--mode", mode,
                         "--top-k", "5", "--matched", "20", query)  # fmt: skip
    served = client.post("/search", json={"query": query, "mode": mode, "top_k": 5}).json()
    assert [h["id"] for h in result["hits"]] == [h["id"] for h in served["hits"]]
    assert result["active_words"] == served["active_words"]
    for mine, theirs in zip(result["hits"], served["hits"], strict=True):
        assert mine["score"] == pytest.approx(theirs["score"], rel=1e-9)
        assert mine["matched"] == theirs["matched"]
        total = sum(m["contribution"] for m in mine["matched"]) + mine["other_contribution"]
        assert mine["score"] == pytest.approx(total, rel=1e-9)
        assert mine["path"].endswith(mine["id"])


def test_cli_pages_and_prints_text(service_corpus, tiny_checkpoint, capsys):
    [first] = _cli_json(capsys, service_corpus, tiny_checkpoint, "--top-k", "4", "blue square")
    [second] = _cli_json(capsys, service_corpus, tiny_checkpoint, "--top-k", "2", "--offset",
                         "2", "blue square")  # fmt: skip
    assert [h["id"] for h in second["hits"]] == [h["id"] for h in first["hits"][2:4]]
    assert [h["rank"] for h in second["hits"]] == [3, 4]
    argv = ["search", "--index", str(service_corpus.index), "--checkpoint", str(tiny_checkpoint),
            "--top-k", "3", "blue square"]  # fmt: skip
    assert lexvla_cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query: blue square") and len(out) == 4
    assert out[1].split()[2] == first["hits"][0]["id"]


def test_cli_bad_index_is_one_line(tmp_path, tiny_checkpoint, capsys):
    code = search_cli.main(["--index", str(tmp_path / "nope"), "--checkpoint",
                            str(tiny_checkpoint), "dog"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
