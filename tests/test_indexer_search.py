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


def test_hits_explain_and_export_carry_the_stored_metadata(
    client, service_corpus, tiny_checkpoint, capsys, tmp_path
):
    from indexer.export import export_store_jsonl
    from indexer.store import CorpusStore

    with CorpusStore.open(service_corpus.store) as store:
        records = store.metadata_records(store.ids())
    assert {r["album"] for r in records.values()} == {"", "more"}
    assert {r["collection"] for r in records.values()} == {"default"}
    served = client.post("/search", json={"query": "a red circle", "top_k": 12}).json()
    assert len(served["hits"]) == 12
    for hit in served["hits"]:
        assert hit["metadata"] == records[hit["id"]]
        assert hit["metadata"]["path"].endswith(hit["id"])
    [result] = _cli_json(capsys, service_corpus, tiny_checkpoint, "--top-k", "12", "a red circle")
    assert [h["metadata"] for h in result["hits"]] == [h["metadata"] for h in served["hits"]]
    hit = served["hits"][0]
    explained = client.post("/explain", json={"query": "a red circle", "image_id": hit["id"]})
    assert explained.json()["metadata"] == records[hit["id"]]
    out = tmp_path / "vectors.jsonl"
    assert export_store_jsonl(service_corpus.store, out) == len(records)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["id"]: line["metadata"] for line in lines} == records
