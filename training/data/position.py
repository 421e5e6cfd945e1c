"""Where a sharded stream is, so that a resumed training run continues on unseen data.

A streamed epoch (``training.data.shards``) is split into *slots*: one per (rank, DataLoader
worker), ``num_slots = world_size x num_workers``. Each slot reads its own shards through its
own shuffle buffer, and both depend only on (seed, epoch, slot, num_slots), so the sequence of
items a slot produces is fixed. Every item it emits (a sample, a skipped record, or the marker of
a shard that could not be read) carries a :class:`StreamIndex` whose ``offset`` is its place in
that sequence (0, 1, 2, ...).

The training loop feeds each batch's ``positions`` to :meth:`StreamPosition.update`, which keeps,
per slot, one past the largest offset consumed. Within a slot items arrive in order, so that
number is exactly how many items of the slot the loop has seen (items that were still in a
DataLoader prefetch queue when the run stopped were not consumed and are not counted). A resumed
``ShardDataset`` replays each slot's sequence and drops its first ``consumed[slot]`` items
before reading their data: the cost is reading tar headers and shuffling record references, not
reading or decoding images.

Resuming needs the same shards, seed, world size and number of workers (so the same slots);
anything else is refused with a clear error rather than silently re-training on seen data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class StreamIndex(NamedTuple):
    """An item's place in a sharded epoch: epoch, slot, number of slots, offset in the slot."""

    epoch: int
    slot: int
    num_slots: int
    offset: int


@dataclass
class StreamPosition:
    """Items consumed per slot in ``epoch``: what a checkpoint stores to resume the stream."""

    epoch: int = 0
    num_slots: int | None = None
    consumed: dict[int, int] = field(default_factory=dict)

    def update(self, positions: Iterable[StreamIndex | tuple[int, int, int, int]]) -> None:
        """Record consumed positions (a batch's ``positions``); a later epoch starts afresh."""
        for raw in positions:
            p = StreamIndex(*raw)
            if p.epoch < self.epoch:
                raise ValueError(f"a position from epoch {p.epoch} arrived in epoch {self.epoch}")
            if p.epoch > self.epoch or self.num_slots is None:
                if p.epoch > self.epoch:
                    self.consumed = {}
                self.epoch, self.num_slots = p.epoch, p.num_slots
            if p.num_slots != self.num_slots:
                raise ValueError(
                    f"positions with {p.num_slots} and {self.num_slots} slots in one epoch"
                )
            self.consumed[p.slot] = max(self.consumed.get(p.slot, 0), p.offset + 1)

    def merge(self, other: StreamPosition) -> None:
        """Combine with another rank's position (slots are global, so this is a union)."""
        if other.num_slots is None:
            return
        if other.epoch > self.epoch or self.num_slots is None:
            self.epoch, self.num_slots, self.consumed = other.epoch, other.num_slots, {}
        if other.epoch < self.epoch:
            return
        if other.num_slots != self.num_slots:
            raise ValueError(
                f"cannot merge positions with {other.num_slots} and {self.num_slots} slots"
            )
        for slot, n in other.consumed.items():
            self.consumed[slot] = max(self.consumed.get(slot, 0), n)

    @property
    def total(self) -> int:
        """Items consumed in this epoch over all slots (usable and skipped)."""
        return sum(self.consumed.values())

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe form (slot keys become strings)."""
        return {
            "epoch": self.epoch,
            "num_slots": self.num_slots,
            "consumed": {str(k): v for k, v in sorted(self.consumed.items())},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StreamPosition:
        consumed = {int(k): int(v) for k, v in state.get("consumed", {}).items()}
        num_slots = state.get("num_slots")
        return cls(
            int(state.get("epoch", 0)), None if num_slots is None else int(num_slots), consumed
        )
