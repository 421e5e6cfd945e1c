"""Settings from LEXVLA_* variables, the vocabulary check, and the ``lexvla serve`` CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from model.vocabulary import VocabularyMismatchError
from service.core.config import Settings


def test_settings_come_from_lexvla_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("LEXVLA_INDEX", str(tmp_path))
    monkeypatch.setenv("LEXVLA_MAX_TOP_K", "7")
    monkeypatch.setenv("LEXVLA_API_KEY", "s3cret")
    monkeypatch.setenv("LEXVLA_BATCH_WAIT_MS", "1.5")
    s = Settings()
    assert (s.index, s.max_top_k, s.batch_wait_ms) == (tmp_path, 7, 1.5)
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    monkeypatch.setenv("LEXVLA_MAX_TOP_K", "5000")  # above the hard ceiling
    with pytest.raises(ValidationError, match="max_top_k"):
        Settings()


def test_the_apps_openapi_shows_its_own_limits(monkeypatch):
    from service.main import create_app

    monkeypatch.setenv("LEXVLA_MAX_QUERY_CHARS", "80")
    spec = create_app(Settings(max_top_k=25, warmup=False)).openapi()
    props = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert props["top_k"]["maximum"] == 25 and props["query"]["maxLength"] == 80


def _foreign_index(tmp_path, size: int):
    """A published index built with some other vocabulary."""
    from indexer.engines.memory.index import MemoryIndex
    from indexer.engines.versions import publish

    index = MemoryIndex.create(size, "f" * 64, "other-checkpoint")
    publish(index, tmp_path / "foreign")
    return tmp_path / "foreign", index


def test_an_index_with_another_vocabulary_is_refused(tiny_model, service_settings, tmp_path):
    from fastapi.testclient import TestClient

    from service.main import create_app

    path, index = _foreign_index(tmp_path, len(tiny_model.vocabulary))
    with pytest.raises(VocabularyMismatchError, match="rebuild the index") as err:
        create_app(service_settings, model=tiny_model, index=index)
    assert "ffffffffffff" in str(err.value) and tiny_model.vocabulary.short_hash in str(err.value)
    app = create_app(service_settings.model_copy(update={"index": path}), model=tiny_model)
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"), TestClient(app):
        pass


def test_serve_cli_reports_problems_in_one_line(tiny_checkpoint, tiny_model, tmp_path, capsys):
    from service.cli import main

    path, _ = _foreign_index(tmp_path, len(tiny_model.vocabulary))
    assert main(["--checkpoint", str(tiny_checkpoint), "--index", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lexvla serve: vocabulary mismatch") and "Traceback" not in err
    assert main(["--checkpoint", str(tiny_checkpoint), "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_checkpoint)]) == 2
    assert "pass --index" in capsys.readouterr().err
    assert main(["--index", str(path), "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_serve_is_a_lexvla_command_and_a_module(monkeypatch):
    from lexvla.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "LEXVLA_" in out.stdout and "--index" in out.stdout


def test_settings_travel_to_workers(monkeypatch):
    from service.cli import settings_environment
    from service.core.config import Settings

    custom = Settings(index="/srv/index", workers=3, api_key="secret", max_top_k=7, dtype="float16")
    for key, value in settings_environment(custom).items():
        monkeypatch.setenv(key, value)
    assert Settings() == custom and Settings().api_key.get_secret_value() == "secret"


@pytest.mark.parametrize("freeze", [True, False])
def test_serving_freezes_the_loaded_heap_out_of_full_collections(
    tiny_model, service_settings, freeze
):
    """With gc_freeze the objects loaded before serving (model, index) are in the permanent
    generation, so a full collection does not walk them; stopping hands them back."""
    import gc

    from fastapi.testclient import TestClient

    from service.main import create_app

    gc.unfreeze()
    settings = service_settings.model_copy(update={"gc_freeze": freeze})
    with TestClient(create_app(settings, model=tiny_model)) as client:
        assert client.get("/readyz").json()["ready"]
        frozen = gc.get_freeze_count()
        assert (frozen > 10_000) if freeze else frozen == 0  # the torch model alone is more
        walked = any(o is tiny_model for o in gc.get_objects())
        assert walked is not freeze  # full collections skip the model only when frozen
    assert gc.get_freeze_count() == 0
    assert any(o is tiny_model for o in gc.get_objects())
