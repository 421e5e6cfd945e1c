"""The commands' quiet default for the libraries they drive (``--verbose`` turns it off).

transformers' progress bars and info messages (``common.quiet``), and each registered engine's
libraries (:meth:`~indexer.engines.engine.Engine.quiet`: e.g. the INFO lines that Anserini and
Lucene print to the process's own stdout and stderr). ``lexvla index``, ``lexvla serve`` and
``lexvla demo`` call this once.
"""

from __future__ import annotations

from common.quiet import quiet_transformers
from indexer.engines.registry import engines


def quiet_libraries(verbose: bool = False) -> None:
    quiet_transformers(verbose)
    for each in engines():
        each.quiet(verbose)
