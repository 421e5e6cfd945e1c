"""model.hub: checkpoints by hub id from the local hub cache (offline), and pushes without network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

import model.hub as hub
from model import CheckpointError, LexVLA
from model import cli as model_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "lexvla-test/tiny"


@pytest.fixture
def hub_cache(tmp_path, tiny_checkpoint, monkeypatch) -> Path:
    """The tiny checkpoint placed in a hub cache laid out as huggingface_hub lays it out."""
    cache = tmp_path / "hub"
    repo = cache / "models--lexvla-test--tiny"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1
    return cache


def test_hub_ids_load_from_the_cache_offline(hub_cache, tiny_model):
    for spec, revision in ((REPO, None), (REPO, COMMIT), (f"{REPO}@main", None)):
        loaded = LexVLA.from_pretrained(spec, revision=revision)
        assert loaded.checkpoint_id == tiny_model.checkpoint_id
        assert loaded.vocabulary.hash == tiny_model.vocabulary.hash
    assert (
        hub.resolve_checkpoint(REPO)
        == hub_cache / "models--lexvla-test--tiny" / "snapshots" / COMMIT
    )


def test_a_missing_hub_checkpoint_is_a_clear_error(hub_cache):
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        LexVLA.from_pretrained("lexvla-test/absent")
    with pytest.raises(CheckpointError, match="revision 'v2'"):
        LexVLA.from_pretrained(REPO, revision="v2")


def test_local_folders_win_over_hub_ids(tmp_path, monkeypatch):
    folder = tmp_path / "org" / "name"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_id("org/name") and hub.resolve_checkpoint("org/name") == Path("org/name")
    assert hub.is_hub_id("other/name") and not hub.is_hub_id("a/b/c")


def test_cli_checkpoint_flag_takes_a_hub_id(hub_cache, capsys):
    assert model_cli.main(["encode", "text", "a red circle", "--checkpoint", REPO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["input"] == "a red circle"


def _training_run(tmp_path: Path, checkpoint: Path) -> Path:
    """A checkpoint folder as `lexvla train` leaves it: train config beside it, metrics above."""
    step = tmp_path / "run" / "checkpoints" / "step-00000020"
    shutil.copytree(checkpoint, step)
    (step / "train_config.json").write_text(
        json.dumps({"data": {"train": "cc12m/{00000..01242}.tar"}, "steps": 20, "batch_size": 8})
    )
    (step / "training_state.pt").write_bytes(b"optimizer state")
    lines = [{"step": 10, "loss": 3.0}, {"step": 20, "eval": {"t2i_r1": 0.25}},
             {"step": 30, "eval": {"t2i_r1": 0.5}}]  # fmt: skip
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return step


def test_push_uploads_the_checkpoint_and_a_card(tmp_path, tiny_checkpoint, monkeypatch):
    step = _training_run(tmp_path, tiny_checkpoint)
    sent = {}

    def fake_upload(repo_id, files, **options):
        sent.update(repo_id=repo_id, files=files, **options)
        return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr(hub, "upload", fake_upload)
    url = hub.push_to_hub(step, "org/tiny", revision="v1", private=True)
    assert url.endswith("/commit/1") and sent["revision"] == "v1" and sent["private"] is True
    local = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file())
    expected = sorted({*local, "README.md"} - {"training_state.pt"})
    assert sorted(sent["files"]) == expected
    card = sent["files"]["README.md"].decode()
    meta = json.loads((step / "checkpoint.json").read_text())
    vocabulary = json.loads((step / "vocabulary.json").read_text())
    assert 'LexVLA.from_pretrained("org/tiny")' in card and meta["checkpoint_id"] in card
    assert f"{vocabulary['size']:,} words" in card and "cc12m/{00000..01242}.tar" in card
    assert '"t2i_r1": 0.25' in card and "0.5" not in card.split("## Configuration")[0]
    with_state = hub.plan_push(step, "org/tiny", include_training_state=True)
    assert "training_state.pt" in with_state


def test_push_refuses_checkpoints_that_name_local_bases(tmp_path, tiny_checkpoint):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["image"]["base"] = str(tmp_path / "somewhere" / "dinov2")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="local path"):
        hub.plan_push(copy, "org/tiny")
    with pytest.raises(ValueError, match="not a hub repository id"):
        hub.plan_push(tiny_checkpoint, "no-slash")


def test_model_push_dry_run_lists_files_without_network(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(hub, "upload", lambda *a, **k: pytest.fail("no upload on a dry run"))
    assert model_cli.main(["push", str(tiny_checkpoint), "org/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lexvla.safetensors" in out and "README.md" in out and "# org/tiny" in out
