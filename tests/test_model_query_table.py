"""The query table (``model.query_table``): its vectors against an independent dense computation,
the sparse normalise/threshold path against the dense one, and its file inside a checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from table_fixtures import random_table

from model import LexVLA, hub
from model import cli as model_cli
from model.checkpoint import CheckpointError
from model.lexical import l2norm, l2norm_rows
from model.query_table import FILE, MissingQueryTable, QueryTable, require_table
from model.sparsify import sparsify

CAPTIONS = ["a red circle", "A large blue square left of a small yellow star", "star star"]


def test_vector_is_the_normalised_thresholded_sum_of_token_rows(tiny_model):
    table = random_table(tiny_model)
    dense_rows = table.rows.toarray()
    got = table.encode(CAPTIONS).toarray()
    limit = 1 / np.sqrt(len(tiny_model.vocabulary))
    for text, row in zip(CAPTIONS, got, strict=True):
        tokenizer = tiny_model.tokenizer  # its own call; BOS (the query prior) first
        ids = [tokenizer.bos_token_id, *tokenizer.encode(text.lower(), add_special_tokens=False)]
        total = dense_rows[ids].sum(axis=0, dtype=np.float64)
        unit = total / np.linalg.norm(total)
        expected = np.where(unit > limit, unit, 0.0)
        assert np.count_nonzero(row) == np.count_nonzero(expected) > 0
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-7)
    # "star star" counts its token twice: not the same vector as "star"
    assert not np.allclose(got[2], table.encode(["star"]).toarray()[0])


def test_the_checkpoints_top_k_applies_to_table_queries(tiny_model):
    table = random_table(tiny_model, seed=1)
    table.top_k = 5
    rows = table.encode(CAPTIONS)
    assert np.diff(rows.indptr).tolist() == [5, 5, 5]
    full = l2norm_rows(table.summed(CAPTIONS)).toarray()
    for i in range(len(CAPTIONS)):
        top = np.sort(full[i])[-5:]
        np.testing.assert_allclose(np.sort(rows[i].data), top, rtol=1e-6)


def test_sparse_rows_are_normalised_and_cut_like_dense_ones():
    rng = np.random.default_rng(3)
    dense = rng.uniform(0, 1, size=(6, 400)).astype(np.float32)
    dense[dense < 0.8] = 0.0  # sparse input; random floats: no ties for top-k
    dense[4] = 0.0  # an empty row stays empty
    rows = sp.csr_matrix(dense)
    unit = l2norm(torch.from_numpy(dense)).numpy()
    np.testing.assert_allclose(l2norm_rows(rows).toarray(), unit, rtol=1e-6, atol=1e-8)
    for threshold, top_k in [(None, None), (0.1, None), (None, 7), (0.0, 3)]:
        want = sparsify(unit, threshold, top_k)
        got = sparsify(sp.csr_matrix(unit), threshold, top_k)
        assert (got.indptr == want.indptr).all() and (got.indices == want.indices).all()
        np.testing.assert_array_equal(got.data, want.data)
    with pytest.raises(ValueError, match="top_k must be positive"):
        sparsify(rows, None, 0)


def test_save_load_and_push_round_trip(tiny_checkpoint, tmp_path, monkeypatch):
    model = LexVLA.from_pretrained(tiny_checkpoint)
    assert model.query_table is None
    model.query_table = random_table(model, seed=2)
    folder = model.save_pretrained(tmp_path / "with-table")
    assert (folder / FILE).is_file()
    loaded = LexVLA.from_pretrained(folder)
    assert loaded.checkpoint_id == LexVLA.from_pretrained(tiny_checkpoint).checkpoint_id
    assert loaded.query_table is not None and loaded.query_table.meta["teacher"] == "random"
    assert (loaded.query_table.rows != model.query_table.rows).nnz == 0
    before, after = model.query_table.encode(CAPTIONS), loaded.query_table.encode(CAPTIONS)
    assert (before != after).nnz == 0
    files = hub.plan_push(folder, "org/tiny")
    assert files[FILE] == folder / FILE
    assert "query table (the `table` query mode, no language model): included" in (
        files["README.md"].decode()
    )
    monkeypatch.setattr(hub, "upload", lambda *a, **k: pytest.fail("no upload on a dry run"))
    assert model_cli.main(["push", str(folder), "org/tiny", "--dry-run"]) == 0


def test_a_table_of_another_vocabulary_is_refused(tiny_checkpoint, tmp_path, tiny_model):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    table = random_table(tiny_model)
    table.vocabulary = type(tiny_model.vocabulary)([5, 6], ["▁ab", "▁cd"])
    with pytest.raises(ValueError, match="columns"):
        QueryTable.for_model(table.rows[:, :2], tiny_model, {})
    table.rows = table.rows[:, :2]
    table.save(folder)
    with pytest.raises(CheckpointError, match="another vocabulary"):
        LexVLA.from_pretrained(folder)
    (folder / FILE).write_bytes(b"not a table")
    with pytest.raises(CheckpointError, match="not a readable query table"):
        LexVLA.from_pretrained(folder)


def test_a_model_without_a_table_says_how_to_get_one(tiny_model):
    with pytest.raises(MissingQueryTable, match="has no query table") as caught:
        require_table(tiny_model)
    message = str(caught.value)
    assert "query_table.steps" in message and "\n" not in message


def test_token_ids_from_the_rust_tokenizer_are_the_tokenizers_own(
    llama2_tokenizer_dir, flickr_sample
):
    """Llama 2's fast tokenizer: the query table reads ids from its Rust half directly."""
    import csv

    from model.backbones import load_tokenizer
    from model.config import load_preset
    from model.query_table import query_token_ids

    text = load_preset("lexvla-7b").text.model_copy(update={"tokenizer": str(llama2_tokenizer_dir)})
    tokenizer = load_tokenizer(text)
    assert tokenizer.backend_tokenizer is not None
    with (flickr_sample / "captions.csv").open() as f:
        captions = [row["caption"] for row in csv.DictReader(f)][:300]
    captions += ["Ünïcode café, 3 dogs!", "  spaces  ", ""]
    own = tokenizer([c.lower() for c in captions], add_special_tokens=False)["input_ids"]
    assert query_token_ids(tokenizer, captions) == [[1, *ids] for ids in own]
