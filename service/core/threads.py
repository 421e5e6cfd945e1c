"""CPU scheduling of the service's threads: the event loop ahead of the search and model threads.

On a busy machine every search and model thread is runnable, and the event loop, which answers
429s, health checks and finished searches, must still get a core within a fraction of a
millisecond each time a request arrives. Two per-thread knobs of the Linux scheduler do that:

- **nice** (:func:`lower_priority`): the search and model threads run ``LEXVLA_WORKER_NICE``
  levels below the loop, so the loop gets most of a core when it needs one.
- **the time slice** (:func:`set_time_slice`): since Linux 6.12 (EEVDF) a thread may ask for a
  shorter slice than the default (the kernel reported 1.4 ms on the 2-core development machine),
  and a waking thread with a shorter slice preempts the running one instead of waiting for its
  slice to end. Measured on that machine under the overload flood: a thread that sleeps 1 ms
  woke 1.1-1.7 ms late at p99 with the default slice and 0.12-0.34 ms late with a 100 us one.
  The loop asks for ``LEXVLA_LOOP_SLICE_US``; the pools' threads reset theirs to the default,
  since threads inherit the slice of the thread that starts them.

Python's ``os`` module has ``setpriority`` but no ``sched_setattr``, which sets the slice, so
that system call is made through ``ctypes``. Both are best effort: on another system, an older
kernel, or where a container forbids the call, the thread keeps the kernel's defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading

# sched_setattr / sched_getattr system call numbers (asm-generic for arm64)
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275)}


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` up to ``sched_period`` (SCHED_ATTR_SIZE_VER0, 48 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),  # SCHED_OTHER: the slice in ns (0: the default)
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def _libc_calls() -> tuple[ctypes.CDLL, int, int] | None:
    """(libc, sched_setattr number, sched_getattr number), or None off Linux or on an
    architecture without a known number."""
    numbers = _SYSCALLS.get(platform.machine()) if sys.platform.startswith("linux") else None
    if numbers is None:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True), *numbers
    except OSError:
        return None


def _this_thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _this_thread_attr() -> _SchedAttr | None:
    """The calling thread's scheduling attributes (``sched_getattr``), or None."""
    calls = _libc_calls()
    if calls is None:
        return None
    libc, _, get = calls
    attr = _SchedAttr()
    if libc.syscall(get, threading.get_native_id(), ctypes.byref(attr), ctypes.sizeof(attr), 0):
        return None
    return attr


def set_time_slice(microseconds: float) -> bool:
    """Ask for a time slice of ``microseconds`` for the calling thread (0: the kernel's
    default; the kernel keeps it within 0.1-100 ms). True if the kernel took the request.

    Only threads of the normal policy are changed, and their nice level is kept."""
    current, calls = _this_thread_attr(), _libc_calls()
    if current is None or calls is None or current.sched_policy != 0:  # SCHED_OTHER only
        return False
    libc, set_, _ = calls
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_nice=_this_thread_nice(),
        sched_runtime=int(microseconds * 1000),
    )
    return libc.syscall(set_, threading.get_native_id(), ctypes.byref(attr), 0) == 0


def time_slice_us() -> float | None:
    """The calling thread's slice in microseconds as the kernel reports it (its default where
    none was asked for), or None where it cannot say (not Linux, or no ``sched_getattr``)."""
    attr = _this_thread_attr()
    return None if attr is None else attr.sched_runtime / 1000


def lower_priority(increment: int) -> None:
    """Pool thread initializer: the kernel's default slice, and ``increment`` nice levels below
    the thread that started it (Linux: nice is per thread; threads this one starts, such as
    the compact engine's pool, inherit both). With every search and model thread runnable, the
    event loop thread, left at the process's priority, then gets a core back within a
    scheduler slice, so 429s, health checks and finished answers are not queued behind them."""
    set_time_slice(0)
    if increment <= 0:
        return
    with contextlib.suppress(AttributeError, OSError):  # not Linux/Unix, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _this_thread_nice() + increment)
