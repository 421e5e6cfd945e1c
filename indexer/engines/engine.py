"""What an engine declares to the registry: its options and its hooks (:class:`Engine`).

An engine is a sub-package of :mod:`indexer.engines` (or any module) with one :class:`Engine`
subclass: its ``name`` (what manifests record), two pydantic models of options
(:class:`EngineOptions`: ``build_options`` for ``create``/``build``, ``open_options`` for
``open``), two hooks it must give and the others where their defaults do not fit:

- :meth:`Engine.create` a new empty index, :meth:`Engine.open` a saved version (required);
- :meth:`Engine.build` an index of a whole corpus store, published as a new version (default:
  ``create``, every store shard added, :func:`~indexer.engines.versions.publish`);
- :meth:`Engine.check_build` refuses a combination of options and job that cannot work;
- :meth:`Engine.publish_shared` publishes what sharded jobs wrote into one shared target;
- :meth:`Engine.quiet` turns its libraries' own logging down (``--verbose`` up).

Options are validated by their model, so an unknown or misspelt option is refused in one line
naming it and the engine's known ones (:class:`EngineOptionError`). Outside the engine an
option is spelt ``<engine>_<option>`` (flags ``--<engine>-<option>``, service settings
``LEXVLA_<ENGINE>_<OPTION>``) unless its model renames it (:attr:`EngineOptions.external`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.engines.base import SearchIndex
from indexer.engines.versions import publish

if TYPE_CHECKING:
    from indexer.store import CorpusStore

Kind = Literal["build", "open"]


class EngineOptionError(ValueError):
    """An option an engine does not know, or a value it refuses (one line)."""


class EngineOptions(BaseModel):
    """Base of an engine's options: unknown names refused, values checked by their types."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # fields given in code only (objects, work folders), never as flags or settings
    internal: ClassVar[frozenset[str]] = frozenset()
    # fields whose outside name is not ``<engine>_<field>`` (e.g. an older setting's name)
    external: ClassVar[Mapping[str, str]] = {}

    def given(self) -> dict[str, Any]:
        """The fields that were set (the rest keep the engine's own defaults)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class NoOptions(EngineOptions):
    """An engine (or a step of one) that takes no options."""


@dataclass(frozen=True)
class BuildHints:
    """What a build knows about the whole job: ``expected_rows`` (the store's count, to size
    blocks evenly) and ``spill_dir`` (a folder beside the index, on its file system, where an
    engine may write finished parts to bound the build's memory; removed afterwards)."""

    expected_rows: int | None = None
    spill_dir: Path | None = None


@dataclass
class Built:
    """What :meth:`Engine.build` did: the version it published (None: it wrote a shared target
    that :meth:`Engine.publish_shared` publishes later), and what the job should report."""

    version: Path | None
    report: dict[str, Any] = field(default_factory=dict)


class Engine:
    """One engine's name, options and hooks; subclasses override what differs."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    build_options: ClassVar[type[EngineOptions]] = NoOptions
    open_options: ClassVar[type[EngineOptions]] = NoOptions

    # --- options ------------------------------------------------------------------------------
    def options_model(self, kind: Kind) -> type[EngineOptions]:
        return self.build_options if kind == "build" else self.open_options

    def options(self, kind: Kind, given: Mapping[str, Any] | EngineOptions | None) -> Any:
        """``given`` checked against the engine's ``kind`` options; unknown names refused."""
        model = self.options_model(kind)
        if isinstance(given, model):
            return given
        values = dict(given.given() if isinstance(given, EngineOptions) else given or {})
        known = list(model.model_fields)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise EngineOptionError(
                f"unknown {kind} option {', '.join(map(repr, unknown))} for the {self.name} "
                f"engine; known: {', '.join(known) or 'none'}"
            )
        try:
            return model(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e.get('loc') or ())) or 'options'}: "
                f"{str(e.get('msg')).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise EngineOptionError(f"{self.name} {kind} option {problems}") from None

    def outside_name(self, kind: Kind, option: str) -> str:
        """How callers spell ``option`` (``<engine>_<option>`` unless the model renames it)."""
        return self.options_model(kind).external.get(option, f"{self.name}_{option}")

    def outside_names(self, kind: Kind) -> dict[str, str]:
        """Outside name -> option, for every option callers may set (internal ones left out)."""
        model = self.options_model(kind)
        return {
            self.outside_name(kind, name): name
            for name in model.model_fields
            if name not in model.internal
        }

    # --- hooks --------------------------------------------------------------------------------
    def create(
        self,
        vocabulary_size: int,
        vocabulary_hash: str,
        checkpoint_id: str,
        threshold: float | None,
        options: Any,
        hints: BuildHints,
    ) -> SearchIndex:
        """A new, empty index (``options``: this engine's build options)."""
        raise NotImplementedError(f"the {self.name} engine cannot create an index")

    def open(self, version: Path, options: Any) -> SearchIndex:
        """The index saved in a version directory (``options``: this engine's open options)."""
        raise NotImplementedError(f"the {self.name} engine cannot open an index")

    def check_build(self, options: Any, sharded: bool) -> None:
        """Refuse options that cannot work for this job (``sharded``: one of several jobs that
        publish one index); raises ValueError."""

    def build(
        self,
        store: CorpusStore,
        index_dir: Path,
        options: Any,
        *,
        sharded: bool = False,
        progress: bool = False,
    ) -> Built:
        """An index of every live image of ``store``, published as a new version of
        ``index_dir``; ``spill_dir`` lies in ``index_dir`` and is removed afterwards."""
        spill = index_dir / f".build-{os.getpid()}"
        manifest = store.manifest
        try:
            index = self.create(
                len(store.vocabulary),
                store.vocabulary.hash,
                manifest["checkpoint_id"],
                manifest["threshold"],
                options,
                BuildHints(store.count, spill),
            )
            index.manifest.max_words = manifest.get("max_words")
            sequence = store.catalog.sequence()  # what the store held before it was read
            for ids, rows in store.iter_shards():
                index.add(ids, rows)
            index.fields = store.field_columns(sequence)
            version = publish(index, index_dir)
            index.activate()
            return Built(version)
        finally:
            shutil.rmtree(spill, ignore_errors=True)

    def quiet(self, verbose: bool) -> None:
        """Turn the engine's libraries' own logging on (``verbose``) or down (the commands'
        default). Default: nothing to turn."""

    def publish_shared(self, index_dir: Path, options: Any) -> Path:
        """Publish what sharded jobs wrote into one shared target (engines that have one)."""
        raise ValueError(f"the {self.name} engine has no shared target to publish")

    def shares_writes(self) -> bool:
        """True when :meth:`publish_shared` is implemented (sharded jobs write one target)."""
        return type(self).publish_shared is not Engine.publish_shared
