"""Skipped samples: the marker a dataset returns instead of a sample, and the counter of them.

A web-scale image-caption set always holds some samples that cannot be used (a file that was
never downloaded, a truncated JPEG, an empty caption). One of them must never stop a run, and
silently dropping them hides a broken pipeline. So every dataset in ``training.data`` returns a
:class:`Skipped` marker in the sample's place; :func:`training.data.collate.collate` drops the
markers and reports ``batch["skipped"]`` (counts by reason). Because the counts travel inside the
batches, the training loop's :class:`SkipCounter` is exact across DataLoader worker processes,
which a counter living inside the dataset could not be (each worker holds its own copy).

Problems found while *reading an index* (a malformed manifest row) happen once, in the process
that builds the dataset; those are counted in the dataset's ``skips`` attribute instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.data.position import StreamIndex

logger = logging.getLogger(__name__)

# Every reason a sample or a row can be skipped for, so that logs and tests share one spelling.
SKIP_REASONS = (
    "missing_file",  # the image path does not exist
    "unreadable_file",  # the path exists but reading it failed (permissions, I/O error)
    "not_an_image",  # the bytes are no image format Pillow knows
    "corrupt_image",  # a known format that fails to decode (truncated or damaged data)
    "image_too_large",  # Pillow's decompression-bomb guard refused it
    "empty_caption",  # the caption is empty or whitespace only
    "bad_caption",  # the caption bytes are not UTF-8
    "missing_image",  # a shard sample with no image member
    "missing_caption",  # a shard sample with no caption member
    "truncated_record",  # a shard member whose data runs past the end of the file
    "unreadable_shard",  # a shard file that cannot be opened or whose tar structure is broken
    "bad_row",  # a manifest row that cannot be parsed or lacks the image/caption field
)

# How many skips of each reason a process logs at WARNING before it goes quiet (DEBUG after).
_WARN_LIMIT = 5
_warned: Counter[str] = Counter()


@dataclass(frozen=True)
class Skipped:
    """Stands in for a sample that could not be used, with why and where."""

    reason: str
    source: str
    detail: str = ""
    position: StreamIndex | None = None

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; expected one of {SKIP_REASONS}")


def log_skip(skipped: Skipped) -> Skipped:
    """Log a skip (the first few per reason and process at WARNING) and return it unchanged."""
    _warned[skipped.reason] += 1
    level = logging.WARNING if _warned[skipped.reason] <= _WARN_LIMIT else logging.DEBUG
    detail = f": {skipped.detail}" if skipped.detail else ""
    logger.log(level, "skipping %s (%s)%s", skipped.source, skipped.reason, detail)
    return skipped


class SkipCounter:
    """Counts of skipped samples by reason; ``update`` accepts a batch's ``skipped`` mapping."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        if counts:
            self.update(counts)

    def add(self, reason: str, n: int = 1) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.counts[reason] += n

    def update(self, counts: Mapping[str, int] | SkipCounter) -> None:
        """Add counts (a batch's ``skipped`` field, a dataset's ``skips`` or another counter)."""
        items = counts.counts if isinstance(counts, SkipCounter) else counts
        for reason, n in items.items():
            self.add(reason, int(n))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """Non-zero counts in ``SKIP_REASONS`` order (stable for logs and JSON)."""
        return {r: self.counts[r] for r in SKIP_REASONS if self.counts[r]}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.as_dict()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SkipCounter:
        return cls(state.get("counts", {}))

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"

    def __str__(self) -> str:
        parts = ", ".join(f"{r}={n}" for r, n in self.as_dict().items())
        return f"{self.total} skipped" + (f" ({parts})" if parts else "")
