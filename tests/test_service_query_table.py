"""``mode: "table"`` in the service and in ``lexvla search``: the table's vector, explained word by
word, contributions summing to the score; a checkpoint without a table is one clear error."""

from __future__ import annotations

import json
import shutil

import pytest
from table_fixtures import random_table

from indexer import search as search_cli
from model import LexVLA

QUERY = "a red circle"


@pytest.fixture
def table(tiny_model, monkeypatch):
    found = random_table(tiny_model, seed=7)
    monkeypatch.setattr(tiny_model, "query_table", found)
    return found


def _weights(table, text: str) -> dict[str, float]:
    row = table.encode_row(text)
    return {table.vocabulary.words[i]: float(v) for i, v in zip(row.indices, row.data, strict=True)}


def test_search_in_table_mode(client, table):
    r = client.post("/search", json={"query": QUERY, "mode": "table", "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "table" and len(body["hits"]) == 5
    expected = _weights(table, QUERY)
    assert body["active_words"] == len(expected)
    assert {w["word"]: w["weight"] for w in body["query_words"]} == pytest.approx(expected)
    words = client.post("/search", json={"query": QUERY, "mode": "words", "top_k": 5}).json()
    assert body["active_words"] > words["active_words"]  # the table adds words, words mode not
    for hit in body["hits"]:
        total = sum(m["contribution"] for m in hit["matched"]) + hit["other_contribution"]
        assert hit["score"] == pytest.approx(total, rel=1e-6)
        for m in hit["matched"]:
            assert m["query_weight"] == pytest.approx(expected[m["word"]])


def test_encode_and_explain_in_table_mode(client, table):
    r = client.post("/encode", json={"text": QUERY, "mode": "table"})
    assert r.status_code == 200 and r.json()["vector"] == pytest.approx(_weights(table, QUERY))
    top = client.post("/search", json={"query": QUERY, "mode": "table", "top_k": 1}).json()
    hit = top["hits"][0]
    why = client.post("/explain", json={"query": QUERY, "mode": "table", "image_id": hit["id"]})
    assert why.status_code == 200, why.text
    explained = why.json()
    assert explained["mode"] == "table" and explained["score"] == pytest.approx(hit["score"])
    assert explained["score"] == pytest.approx(
        sum(m["contribution"] for m in explained["matched"]), rel=1e-6
    )


def test_a_checkpoint_without_a_table_is_a_422(client, tiny_model):
    assert tiny_model.query_table is None
    for path, body in [
        ("/search", {"query": QUERY, "mode": "table"}),
        ("/encode", {"text": QUERY, "mode": "table"}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "has no query table" in detail and "mode 'model' or 'words'" in detail
        assert "\n" not in detail and r.json()["errors"][0]["loc"] == ["body", "mode"]


def test_cli_table_mode_matches_the_service(
    client, table, service_corpus, tiny_checkpoint, tmp_path, capsys
):
    folder = tmp_path / "with-table"
    shutil.copytree(tiny_checkpoint, folder)
    table.save(folder)
    assert LexVLA.from_pretrained(folder).query_table is not None
    argv = ["--index", str(service_corpus.index), "--checkpoint", str(folder),
            "--store", str(service_corpus.store), "--json", "--mode", "table",
            "--top-k", "5", "--matched", "20", QUERY]  # fmt: skip
    assert search_cli.main(argv) == 0
    [result] = json.loads(capsys.readouterr().out)
    served = client.post("/search", json={"query": QUERY, "mode": "table", "top_k": 5}).json()
    assert [h["id"] for h in result["hits"]] == [h["id"] for h in served["hits"]]
    for mine, theirs in zip(result["hits"], served["hits"], strict=True):
        assert mine["score"] == pytest.approx(theirs["score"], rel=1e-9)
        assert mine["matched"] == theirs["matched"]


def test_cli_table_mode_without_a_table_is_one_line(service_corpus, tiny_checkpoint, capsys):
    argv = ["--index", str(service_corpus.index), "--checkpoint", str(tiny_checkpoint),
            "--mode", "table", QUERY]  # fmt: skip
    assert search_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no query table" in err and "Traceback" not in err
