"""Thread priority of the service's pools: optionally the search and model threads below the loop.

With ``LEXVLA_WORKER_NICE`` above 0 the search and model threads run that many nice levels below
the event loop thread (Linux: nice is per thread, and threads they start, such as the compact
engine's pool, inherit it), so that on a saturated machine the loop, which answers 429s and
health checks, gets a core back sooner. Off by default: side by side the gain was within the
noise of a shared machine (docs/lab-notes.md). Best effort: where the system or a container
forbids it, the threads keep the process's priority.
"""

from __future__ import annotations

import contextlib
import os
import threading


def this_thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_priority(increment: int) -> None:
    """Pool thread initializer: ``increment`` nice levels below the thread that started it."""
    if increment <= 0:
        return
    with contextlib.suppress(AttributeError, OSError):  # not Linux/Unix, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), this_thread_nice() + increment)
