"""Lazy package exports (PEP 562): a package names what it offers without importing it all.

``model`` and ``model.data`` export names whose modules pull in torch and transformers. The
indexer and the service also import light parts of them on their own (``model.vocabulary``,
``model.data.sources``); with lazy exports those cost no torch import, so an index-only
process starts without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable:
    """A module ``__getattr__`` that imports ``exports[name]`` (a relative module) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name], package)
        # Bind every export of that module: importing ``model.bag_of_words`` for
        # ``bag_of_words_row`` set the package's ``bag_of_words`` to the submodule, which would
        # then shadow the function of that name.
        for other, where in exports.items():
            if where == exports[name]:
                namespace[other] = getattr(module, other)
        return namespace[name]

    return __getattr__
