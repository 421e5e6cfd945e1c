"""The commands' quiet default for the libraries they drive (``--verbose`` turns it off).

transformers' progress bars and info messages (``model.quiet``), and the INFO lines that
Anserini (log4j2) and Lucene (java.util.logging) print to the process's own stdout and stderr
(``indexer.engines.lucene.jvm``). ``lexvla index``, ``lexvla serve`` and ``lexvla demo`` call this once.
"""

from __future__ import annotations

from indexer.engines.lucene.jvm import set_java_logging
from model.quiet import quiet_transformers


def quiet_libraries(verbose: bool = False) -> None:
    quiet_transformers(verbose)
    set_java_logging(verbose)
