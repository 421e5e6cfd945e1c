"""common.flags: every field of the model a command fills is a flag, with the model's defaults."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel, Field

from common.flags import add_model_flags, model_values
from indexer import cli as index_cli
from indexer.job import IndexJob
from service import cli as serve_cli
from service.core.config import Settings


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = index_cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_settings_field_is_a_serve_flag():
    assert _dests(serve_cli.parser()) == set(Settings.model_fields)


@pytest.mark.parametrize("command", ["build", "add"])
def test_every_index_job_field_is_a_flag(command):
    flags = _dests(_subparser(command))
    assert flags >= index_cli.COMMON_FLAGS  # --verbose
    expected = set(IndexJob.model_fields) - set(index_cli.JOB_FLAGS_EXCLUDED)
    engines = set(index_cli.engine_flags("build").model_fields)  # --<engine>-<option>
    assert {"qdrant_url", "qdrant_collection", "compact_pruning", "lucene_scale"} <= engines
    assert flags - index_cli.COMMON_FLAGS == expected | engines


def test_a_new_field_gets_a_flag_without_code():
    class Extended(IndexJob):
        qdrant_url: str | None = Field(default=None, description="a field added later")
        replicas: int = 1
        labels: list[str] = Field(default_factory=list)

    parser = argparse.ArgumentParser()
    add_model_flags(parser, Extended)
    args = parser.parse_args(
        ["--source", "s", "--store", "t", "--checkpoint", "c", "--qdrant-url", "http://q",
         "--replicas", "3", "--labels", "a", "b"]
    )  # fmt: skip
    job = Extended(**model_values(args, Extended))
    assert (job.qdrant_url, job.replicas, job.labels) == ("http://q", 3, ["a", "b"])
    assert "a field added later" in parser.format_help()


def test_index_flags_fill_the_job_with_its_own_defaults():
    args = _subparser("build").parse_args(
        ["--images", "photos", "--store", "s", "--checkpoint", "c", "--no-thumbnails",
         "--batch-size", "8", "--engine", "lucene"]
    )  # fmt: skip
    job = IndexJob(**model_values(args, IndexJob))
    expected = IndexJob(source="photos", store="s", checkpoint="c", thumbnails=False,
                        batch_size=8, engine="lucene")  # fmt: skip
    assert job == expected
    with pytest.raises(SystemExit):
        _subparser("build").parse_args(["--store", "s", "--checkpoint", "c"])  # --source


def test_serve_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("LEXVLA_MAX_TOP_K", "7")
    monkeypatch.setenv("LEXVLA_WARMUP", "false")
    parser = serve_cli.parser()
    from_env = serve_cli.settings_from(parser.parse_args([]))
    assert (from_env.max_top_k, from_env.warmup, from_env.port) == (7, False, 8000)
    given = serve_cli.settings_from(parser.parse_args(["--max-top-k", "9", "--warmup"]))
    assert (given.max_top_k, given.warmup) == (9, True)
    help_text = " ".join(parser.format_help().split())
    assert "default: 100; env LEXVLA_MAX_TOP_K" in help_text


def test_bad_values_are_one_line_errors(capsys):
    assert serve_cli.main(["--max-top-k", "5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-top-k" in err and "1000" in err
    code = index_cli.main(
        ["build", "--source", ".", "--store", "s", "--checkpoint", "c", "--shard-id", "3"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "shard_id must be in 0..0" in err


class _Nested(BaseModel):
    mapping: dict[str, float] = Field(default_factory=dict)
    choice: str = "a"


def test_json_fields_and_choices():
    parser = argparse.ArgumentParser()
    add_model_flags(parser, _Nested, choices={"choice": ["a", "b"]})
    args = parser.parse_args(["--mapping", '{"red": 2.0}', "--choice", "b"])
    assert _Nested(**model_values(args, _Nested)) == _Nested(mapping={"red": 2.0}, choice="b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--choice", "c"])
