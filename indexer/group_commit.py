"""Group commit: single-image adds that arrive together share one store commit and one version.

A live add costs a store commit (files fsynced, one SQLite transaction) and a published index
version, whatever the number of images in it (:mod:`indexer.live`). Under concurrent uploads
most of that is repeated work, so :class:`GroupCommit` lets the adds that arrive while a write is
running wait for it to end and then go in together: a waiting thread becomes the leader, takes
the oldest pending adds, writes them as one :meth:`LiveWriter.add`, and hands the version (or
the error) to every add of its group; a leader whose own add did not fit leads again. Each caller still returns only once its own images are on
disk and published, so an acknowledgement keeps its meaning; a group is bounded by
``max_images`` so one version never grows without limit.

Within one group an id given twice keeps its last image (the earlier upload is replaced, as a
retried upload would be). Across server processes the index directory's write lock still
serialises the groups of each process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import scipy.sparse as sp

from indexer.live import LiveWriter, Prepared


@dataclass
class _Add:
    prepared: Sequence[Prepared]
    rows: sp.csr_matrix
    version: str | None = None  # set when its group is written ...
    error: BaseException | None = None  # ... or failed

    @property
    def done(self) -> bool:
        return self.version is not None or self.error is not None


class GroupCommit:
    """Adds through ``writer`` from many threads, grouped (see the module docstring)."""

    def __init__(self, writer: LiveWriter, max_images: int = 256):
        self.writer = writer
        self.max_images = max_images
        self._changed = threading.Condition()
        self._pending: list[_Add] = []
        self._leading = False

    def add(self, prepared: Sequence[Prepared], rows: sp.csr_matrix) -> str:
        """Store and index ``prepared`` (row i is image i) with whatever else is waiting;
        returns the published version's name, or raises the group's error."""
        mine = _Add(prepared, rows)
        with self._changed:
            self._pending.append(mine)
        while True:  # lead groups (the oldest adds first) until one of them holds this add
            with self._changed:
                while not mine.done and self._leading:
                    self._changed.wait()
                if mine.done:
                    return self._result(mine)
                self._leading = True
                group = self._take()
            try:
                self._write(group)
            finally:
                with self._changed:
                    self._leading = False
                    self._changed.notify_all()

    def _take(self) -> list[_Add]:
        """The pending adds up to ``max_images`` images (at least one add), oldest first."""
        group: list[_Add] = []
        images = 0
        while self._pending and (
            not group or images + len(self._pending[0].prepared) <= self.max_images
        ):
            images += len(self._pending[0].prepared)
            group.append(self._pending.pop(0))
        return group

    def _write(self, group: list[_Add]) -> None:
        last = {p.info.id: (a, i) for a in group for i, p in enumerate(a.prepared)}
        prepared = [a.prepared[i] for a, i in last.values()]
        rows = sp.vstack([a.rows[i] for a, i in last.values()], format="csr")
        try:
            version: str | None = self.writer.add(prepared, rows)
            error = None
        except BaseException as exc:  # every add of the group fails with the write
            version, error = None, exc
        for a in group:
            a.version, a.error = version, error

    @staticmethod
    def _result(add: _Add) -> str:
        if add.error is not None:
            raise add.error
        assert add.version is not None
        return add.version
