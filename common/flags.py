"""Command-line flags generated from the pydantic model a command fills.

``lexvla serve`` fills ``service.core.config.Settings``, ``lexvla index build|add`` fill
``indexer.job.IndexJob``: their flags, defaults, environment variables and ``--help`` all
come from the model's fields, so a field added to the model is a flag at once and no default is
written twice. A field ``batch_size`` becomes ``--batch-size``; a bool becomes ``--x`` /
``--no-x``; a ``Literal`` becomes a choice; a list takes several values; a field whose type is
a mapping or a model takes JSON. Flags that are not given are left out of the parsed values, so
the model's own defaults (and, for pydantic-settings models, its ``LEXVLA_*`` environment
variables) apply.

Written here rather than with pydantic-settings' CLI support: these flags live in argparse
sub-commands beside hand-written ones (``index merge``, ``search``'s query), need aliases
(``--images`` for ``--source``) and one-line errors, and the indexer must not depend on the
service's settings library.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r} ({exc.msg})") from None


def _env_name(model: type[BaseModel], field: str) -> str | None:
    config = getattr(model, "model_config", {})
    prefix = config.get("env_prefix") if isinstance(config, Mapping) else None
    return f"{prefix}{field}".upper() if prefix is not None else None


def _help(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    parts = [info.description or ""]
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "***"
        if default is not None and default != []:
            parts.append(f"default: {default}")
    env = _env_name(model, name)
    if env:
        parts.append(f"env {env}")
    text = "; ".join(p for p in parts if p)
    return text.replace("%", "%%")


def add_model_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    exclude: Iterable[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    required: bool | None = None,
) -> list[str]:
    """Add one flag per field of ``model`` to ``parser``; returns the field names added.

    ``required`` (default: True for plain models, False for settings read from the environment)
    says whether fields without a default must be given on the command line.
    """
    skip = set(exclude)
    from_env = any(_env_name(model, n) for n in model.model_fields)
    must = (not from_env) if required is None else required
    added = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        names = [flag_name(name), *((aliases or {}).get(name, ()))]
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": _help(model, name, info),
        }
        annotation, _ = _unwrap_optional(info.annotation)
        origin = get_origin(annotation)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = [str(a) for a in get_args(annotation)]
        elif origin in (list, tuple, set, frozenset):
            inner = (get_args(annotation) or (str,))[0]
            kwargs["nargs"] = "+"
            kwargs["type"] = inner if inner in (int, float, str, Path) else str
        elif annotation in (int, float, str, Path):
            kwargs["type"] = annotation
        elif annotation is SecretStr:
            kwargs["type"] = str
        else:  # mappings, nested models and anything else pydantic parses from JSON
            kwargs["type"] = _json_value
            kwargs["metavar"] = "JSON"
        if choices and name in choices:
            kwargs["choices"] = list(choices[name])
        if must and info.is_required():
            kwargs["required"] = True
        parser.add_argument(*names, **kwargs)
        added.append(name)
    return added


def model_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields that were given on the command line (the rest keep their defaults)."""
    given = vars(args)
    return {name: given[name] for name in model.model_fields if name in given}


def explain_validation_error(exc: ValidationError) -> str:
    """A pydantic error as one line per problem, naming the flag (``--top-k: ...``)."""
    lines = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        where = flag_name(str(loc[0])) if loc else "input"
        lines.append(f"{where}: {error.get('msg', 'invalid value')}")
    return "; ".join(lines)
