"""docker-compose.yml and docker/Dockerfile, checked without a Docker engine.

The compose file is validated with a real YAML parser against the Compose specification's JSON
schema (as vendored by check-jsonschema), and every path, port, build target, variable and
command it names is checked against the code.
"""

import copy
import importlib
import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.core.config import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
ENV_EXAMPLE = REPO / "docker" / "env.example"


def _defaults(text: str) -> str:
    """``${VAR:-default}`` -> ``default`` (compose's interpolation with the documented default)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _mount_targets(volumes: list[str]) -> set[str]:
    return {_defaults(v).split(":")[1] for v in volumes}


def _schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_compose_file_follows_the_compose_specification():
    jsonschema.validate(COMPOSE, _schema())


def test_the_schema_check_can_fail():
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["api"]["healthcheck"]["interval"] = {"seconds": 30}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["api"]["restart_policy"] = "always"  # not a service key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_services_profiles_and_gpu_reservation():
    services = COMPOSE["services"]
    assert set(services) == {"api", "indexer", "trainer", "qdrant", "api-qdrant", "indexer-qdrant"}
    assert "profiles" not in services["api"]
    assert services["indexer"]["profiles"] == ["index"]
    assert services["trainer"]["profiles"] == ["train"]
    for name in ("qdrant", "api-qdrant", "indexer-qdrant"):
        assert services[name]["profiles"] == ["qdrant"]
    devices = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_build_paths_and_targets_exist():
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, flags=re.M))
    for name, service in COMPOSE["services"].items():
        if "build" not in service:  # the official Qdrant image
            continue
        build = service["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        assert build["target"] in targets, f"{name}: no stage {build['target']!r} in the Dockerfile"
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, flags=re.M):
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    # build steps that run project code name functions that exist
    imports = re.findall(r"from ([\w.]+) import (\w+)", DOCKERFILE)
    assert ("indexer.engines.compact.warmup", "compile_kernels") in imports
    for module, name in imports:
        assert callable(getattr(importlib.import_module(module), name)), f"{module}.{name}"


def _settings_variables() -> set[str]:
    return {f"LEXVLA_{name.upper()}" for name in Settings.model_fields}


def _interpolated() -> set[str]:
    text = (REPO / "docker-compose.yml").read_text()
    return set(re.findall(r"\$\{(LEXVLA_[A-Z_]+)", text))


def test_every_variable_is_read_by_the_code_or_by_compose():
    known = _settings_variables()
    for name in ("api", "api-qdrant"):
        unknown = set(COMPOSE["services"][name]["environment"]) - known
        assert not unknown, f"compose sets variables no setting reads in {name}: {unknown}"
    example = [
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    stray = set(example) - known - _interpolated()
    assert not stray, f"env.example names variables nothing reads: {stray}"
    assert _interpolated() <= set(example), "every compose variable is documented in env.example"


def test_ports_paths_and_healthchecks_match_the_service():
    api = COMPOSE["services"]["api"]
    port = int(api["environment"]["LEXVLA_PORT"])
    assert api["ports"][0].endswith(f":{port}")
    assert f"EXPOSE {port}" in DOCKERFILE and f'--port", "{port}"' in DOCKERFILE
    mounts = _mount_targets(api["volumes"])
    for var in ("LEXVLA_CHECKPOINT", "LEXVLA_STORE", "LEXVLA_INDEX"):
        assert api["environment"][var] in mounts, f"{var} points outside the mounted volumes"
    from service.main import create_app

    routes = set(create_app(Settings()).openapi()["paths"])
    for text in (" ".join(api["healthcheck"]["test"]), DOCKERFILE):
        for path in re.findall(r"127\.0\.0\.1:\d+(/\w+)", text):
            assert path in routes, f"healthcheck calls {path}, which the app does not serve"


def test_qdrant_service_volume_health_key_and_the_profile_that_uses_it():
    services = COMPOSE["services"]
    qdrant = services["qdrant"]
    assert qdrant["image"].startswith("${LEXVLA_QDRANT_IMAGE:-qdrant/qdrant:v")
    assert _mount_targets(qdrant["volumes"]) == {"/qdrant/storage"}
    # Qdrant reads its key from QDRANT__SERVICE__API_KEY; compose takes it from the env file
    assert "LEXVLA_QDRANT_API_KEY" in qdrant["environment"]["QDRANT__SERVICE__API_KEY"]
    check = " ".join(qdrant["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/6333" in check and "/readyz" in check
    api = services["api-qdrant"]
    url = api["environment"]["LEXVLA_QDRANT_URL"]
    assert url == "http://qdrant:6333" and qdrant["expose"] == ["6333"]
    assert (
        api["environment"]["LEXVLA_QDRANT_API_KEY"]
        == qdrant["environment"]["QDRANT__SERVICE__API_KEY"]
    )
    assert api["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert api["environment"]["LEXVLA_INDEX"] in _mount_targets(api["volumes"])
    assert api["ports"] == services["api"]["ports"] and api["build"] == services["api"]["build"]
    from indexer.cli import _parser as index_parser

    command = [_defaults(p) for p in services["indexer-qdrant"]["command"]]
    command = [re.sub(r"\$\{\w+:\?[^}]*\}", "key", p) for p in command]
    args = index_parser().parse_args(command)
    assert args.engine == "qdrant" and args.qdrant_url == url
    assert args.index == api["environment"]["LEXVLA_INDEX"]
    assert services["indexer-qdrant"]["depends_on"]["qdrant"]["condition"] == "service_healthy"


def test_commands_parse_with_the_real_command_lines():
    from indexer.cli import _parser as index_parser
    from service.cli import parser as serve_parser

    command = [_defaults(part) for part in COMPOSE["services"]["indexer"]["command"]]
    args = index_parser().parse_args(command)
    mounts = _mount_targets(COMPOSE["services"]["indexer"]["volumes"])
    for value in (args.source, args.store, args.checkpoint, args.index):
        assert value in mounts
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.M).group(1))
    assert cmd[:2] == ["lexvla", "serve"]
    serve_parser().parse_args(cmd[2:])
    assert 'ENTRYPOINT ["lexvla", "index"]' in DOCKERFILE  # the indexer's command follows it
    assert 'ENTRYPOINT ["lexvla", "train"]' in DOCKERFILE


def test_the_api_scales_to_workers_and_replicas_over_one_index():
    """LEXVLA_WORKERS processes per container and LEXVLA_API_REPLICAS containers, all over the
    same index volume, writable (POST /admin/reload pins a version there for all of them)."""
    for name in ("api", "api-qdrant"):
        api = COMPOSE["services"][name]
        assert _defaults(api["environment"]["LEXVLA_WORKERS"]) == "1"
        assert int(_defaults(str(api["deploy"]["replicas"]))) == 1
        index = api["environment"]["LEXVLA_INDEX"]
        (mount,) = [v for v in api["volumes"] if _defaults(v).split(":")[1] == index]
        assert not _defaults(mount).endswith(":ro"), f"{name}: the index volume is read-only"
    Settings(workers=int(_defaults(COMPOSE["services"]["api"]["environment"]["LEXVLA_WORKERS"])))
