"""The engines by name: :func:`register`, :func:`engine`, and options spelt the outside way.

The index job, the builder, the runner, ``lexvla index`` and the service ask this module; none
of them names an engine. Adding one is its own module (an :class:`~indexer.engines.engine.Engine`
subclass) and one :func:`register` line, here for the engines that ship with lexvla.

Outside an engine its options are spelt ``<engine>_<option>`` (:meth:`Engine.outside_name`):
:func:`split_options` sorts such names (a job's fields, parsed flags) into the chosen engine's
options and refuses those of another engine or of none; :func:`options_by_engine` reads every
engine's options that an object has as attributes (the service's settings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from indexer.engines.compact import CompactEngine
from indexer.engines.engine import Engine, EngineOptionError, Kind
from indexer.engines.lucene import LuceneEngine
from indexer.engines.memory import MemoryEngine
from indexer.engines.qdrant import QdrantEngine

# bench/index_search.py, side by side at 100k and 1M images: docs/results-search.md says why
DEFAULT_ENGINE = "compact"

_ENGINES: dict[str, Engine] = {}


def register(new: Engine) -> Engine:
    """Make ``new`` available by its name (a name taken already is a ValueError)."""
    if new.name in _ENGINES:
        raise ValueError(f"an engine named {new.name!r} is registered already")
    _ENGINES[new.name] = new
    return new


def unregister(name: str) -> None:
    """Remove an engine (tests that register one of their own)."""
    _ENGINES.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered engines' names, in registration order."""
    return tuple(_ENGINES)


def engines() -> tuple[Engine, ...]:
    return tuple(_ENGINES.values())


def engine(name: str) -> Engine:
    """The engine called ``name`` (a manifest's, a flag's); unknown: one-line ValueError."""
    try:
        return _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown index engine {name!r}; known: {', '.join(_ENGINES)}") from None


def split_options(values: Mapping[str, Any], chosen: str, kind: Kind) -> dict[str, Any]:
    """The options of engine ``chosen`` among outside names (``qdrant_url`` -> ``url``).

    A name of another engine's option, or one that starts like an engine's but is none of its
    options (a misspelling), is refused in one line; names of no engine are not looked at.
    """
    taken: dict[str, Any] = {}
    for name, value in values.items():
        owner, option = _owner(name, kind)
        if owner is None:
            continue
        if owner.name != chosen:
            raise EngineOptionError(
                f"{name} is an option of the {owner.name} engine, not of {chosen} "
                f"(the engine this index uses)"
            )
        if option is None:
            known = ", ".join(owner.outside_names(kind))
            raise EngineOptionError(
                f"unknown {kind} option {name!r} for the {owner.name} engine; known: {known}"
            )
        taken[option] = value
    return taken


def engine_names_in(values: Iterable[str], kind: Kind) -> set[str]:
    """Which of ``values`` are outside names of some engine's options (or look like one)."""
    return {name for name in values if _owner(name, kind)[0] is not None}


def options_by_engine(source: object, kind: Kind = "open") -> dict[str, dict[str, Any]]:
    """Every engine's ``kind`` options that ``source`` has as attributes of their outside name
    (``settings.qdrant_url`` -> ``{"qdrant": {"url": ...}}``); each set is checked."""
    found: dict[str, dict[str, Any]] = {}
    for each in _ENGINES.values():
        given = {
            option: getattr(source, outside)
            for outside, option in each.outside_names(kind).items()
            if hasattr(source, outside)
        }
        if given:
            each.options(kind, given)
            found[each.name] = given
    return found


def _owner(name: str, kind: Kind) -> tuple[Engine | None, str | None]:
    """The engine a name belongs to and its option (None when only its prefix matches)."""
    for each in _ENGINES.values():
        option = each.outside_names(kind).get(name)
        if option is not None:
            return each, option
    for each in _ENGINES.values():
        if name.startswith(f"{each.name}_"):
            return each, None
    return None, None


register(MemoryEngine())
register(CompactEngine())
register(LuceneEngine())
register(QdrantEngine())
