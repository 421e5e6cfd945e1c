"""The query table stage (``training.query_table``) on the tiny model: it learns, it resumes, it
runs after ``lexvla train``, and its training form is the service's form."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import LexVLA
from model.lexical import l2norm
from model.query_table import FILE, QueryTable
from model.sparsify import default_threshold
from training import query_table as stage
from training.config import load_config
from training.loop import train

HELD_OUT = ["a red circle", "a small green star above a blue heart", "two yellow squares"]


def _config(run: Path, **table: object):
    overrides = {
        "output_dir": str(run),
        "data.train": "shapes:48",
        "data.num_workers": 0,
        "data.augment": False,
        "query_table.batch_size": 8,
        # the random tiny teacher activates ~450 of its 940 words for every caption: a few
        # tokens need wide rows to reach them
        "query_table.top_k": 256,
        **{f"query_table.{k}": v for k, v in table.items()},
    }
    return load_config(None, overrides)


def _copy(checkpoint: Path, where: Path) -> Path:
    shutil.copytree(checkpoint, where)
    return where


def _distill_gap(teacher: LexVLA, vectors: torch.Tensor) -> float:
    """Mean ``1 - cos`` of ``vectors`` against the teacher's thresholded query vectors."""
    target = teacher.encode_texts(HELD_OUT).float()
    target = torch.where(target > default_threshold(target.shape[1]), target, 0.0)
    return float((1 - F.cosine_similarity(vectors, target, dim=1)).mean())


def _table_vectors(table: QueryTable) -> torch.Tensor:
    return l2norm(torch.from_numpy(table.summed(HELD_OUT).toarray()))


def test_training_lowers_the_distillation_loss(tiny_checkpoint, tmp_path):
    checkpoint = _copy(tiny_checkpoint, tmp_path / "ckpt")
    config = _config(tmp_path / "run", steps=40, contrastive_weight=0.1)
    summary = stage.train_query_table(config, checkpoint)
    assert not summary["reused"] and summary["steps"] == 40
    assert summary["last_loss"]["distill_loss"] < 0.8 * summary["first_loss"]["distill_loss"]
    teacher = LexVLA.from_pretrained(checkpoint)
    assert teacher.query_table is not None and (checkpoint / FILE).is_file()
    assert not (tmp_path / "run" / stage.STATE).exists()
    words_mode = stage.TableStudent(teacher.tokenizer, teacher.vocabulary)  # the starting point
    with torch.no_grad():
        before = _distill_gap(teacher, words_mode(HELD_OUT))
    after = _distill_gap(teacher, _table_vectors(teacher.query_table))
    assert after < 0.8 * before  # on captions it never saw
    assert np.diff(teacher.query_table.rows.indptr).max() <= 256
    assert teacher.query_table.rows.data.min() > 0
    # done: a second call leaves the table as it is
    assert stage.train_query_table(config, checkpoint)["reused"]


def test_a_killed_stage_resumes_to_the_same_table(tiny_checkpoint, tmp_path, monkeypatch):
    settings = {"steps": 12, "every": 4, "prune_fraction": 0.5}
    whole = _copy(tiny_checkpoint, tmp_path / "whole")
    stage.train_query_table(_config(tmp_path / "run-whole", **settings), whole)

    killed = _copy(tiny_checkpoint, tmp_path / "killed")
    config = _config(tmp_path / "run-killed", **settings)
    real_step, calls = stage.table_step, []

    def dies_at_step_ten(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(stage, "table_step", dies_at_step_ten)
    with pytest.raises(KeyboardInterrupt):
        stage.train_query_table(config, killed)
    assert (tmp_path / "run-killed" / stage.STATE).is_file() and not (killed / FILE).exists()
    monkeypatch.setattr(stage, "table_step", real_step)
    summary = stage.train_query_table(config, killed)
    assert summary["resumed_at"] == 8  # the state of step 8 (every 4)
    a = LexVLA.from_pretrained(whole).query_table
    b = LexVLA.from_pretrained(killed).query_table
    assert a is not None and b is not None
    assert (a.rows.indices == b.rows.indices).all()
    np.testing.assert_allclose(a.rows.data, b.rows.data, rtol=1e-5, atol=1e-7)


def test_the_training_form_is_the_served_form(tiny_model):
    student = stage.TableStudent(tiny_model.tokenizer, tiny_model.vocabulary)
    with torch.no_grad():
        student.weight.uniform_(-0.5, 1.0)
        student.project(top_k=20)  # non-negative, 20 words a token
    served = QueryTable.for_model(student.export(top_k=20), tiny_model, {})
    with torch.no_grad():
        trained = tiny_model.sparsify(student(HELD_OUT))  # the model's own threshold
    got = served.encode(HELD_OUT)
    assert (got.indptr == trained.indptr).all() and (got.indices == trained.indices).all()
    np.testing.assert_allclose(got.data, trained.data, rtol=1e-5)


def test_lexvla_train_runs_the_stage_after_the_last_step(tmp_path):
    run = tmp_path / "run"
    overrides = {
        "output_dir": str(run), "steps": 2, "batch_size": 4, "cpu_threads": 1,
        "progress": False, "tensorboard": False, "eval.data": None,
        "model.overrides.image.image_size": 56, "data.train": "shapes:24",
        "data.num_workers": 0, "pretrain.image.steps": 0, "pretrain.text.steps": 0,
        "query_table.steps": 3, "query_table.batch_size": 4,
    }  # fmt: skip
    summary = train(load_config("tiny-shapes", overrides))
    assert summary["query_table"]["steps"] == 3
    model = LexVLA.from_pretrained(summary["query_table"]["path"])
    assert model.query_table is not None
    assert model.query_table.meta["teacher"] == model.checkpoint_id
    with pytest.raises(ValueError):
        load_config("tiny-shapes", {"query_table.steps": -1})
