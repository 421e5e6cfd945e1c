"""Skipped inputs: the marker a reader returns instead of an unusable sample, and their counts.

A web-scale image collection always holds inputs that cannot be used (a file that was never
downloaded, a truncated JPEG, an empty caption, a repeated id). One of them must never stop a
training run or an indexing job, and silently dropping them hides a broken pipeline. So every
reader in :mod:`model.data` returns a :class:`Skipped` marker in the sample's place, with a
*reason code* from :data:`SKIP_REASONS` (one spelling for logs, job reports and tests) and a free
``detail`` saying exactly what was wrong. Reports count by code: a thousand duplicate ids are one
``duplicate_id`` entry, not a thousand keys.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Every reason an input can be skipped for.
SKIP_REASONS = (
    "missing_file",  # the image path does not exist
    "unreadable_file",  # the path exists but reading it failed (permissions, I/O error)
    "empty_file",  # the file has 0 bytes
    "not_an_image",  # the bytes are no image format Pillow knows (HTML saved as .jpg, text)
    "corrupt_image",  # a known format that fails to decode (truncated or damaged data)
    "image_too_large",  # more pixels than the limit (decompression-bomb guard)
    "empty_caption",  # the caption is empty or whitespace only
    "bad_caption",  # the caption bytes are not UTF-8
    "missing_image",  # a shard sample with no image member
    "missing_caption",  # a shard sample with no caption member
    "truncated_record",  # a shard member whose data runs past the end of the file
    "unreadable_shard",  # a shard file that cannot be opened or whose tar structure is broken
    "bad_row",  # a manifest row that cannot be parsed or lacks the image (or caption) field
    "duplicate_id",  # an id already given to an earlier, different image of the same source
    "bad_metadata",  # a metadata value that does not parse as its field's type (indexer.metadata)
    "other",  # a record written before reasons had codes (read back from an old store)
)

# How many skips of each reason a process logs at WARNING before it goes quiet (DEBUG after).
_WARN_LIMIT = 5
_warned: Counter[str] = Counter()


@dataclass(frozen=True)
class Skipped:
    """An input that could not be used: the reason code, where it was, and what was wrong.

    ``id`` is the input's id when the source gave it one (the indexer records skipped ids);
    ``position`` is set by streaming readers that resume (``training.data.position``).
    """

    reason: str
    source: str
    detail: str = ""
    id: str = ""
    position: Any = None

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; expected one of {SKIP_REASONS}")

    @property
    def message(self) -> str:
        """``reason: detail`` (or the reason alone): one line for logs and stores."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    @classmethod
    def from_message(cls, message: str, source: str, id: str = "") -> Skipped:
        """Inverse of :attr:`message`; text without a known code becomes reason ``other``."""
        code, sep, detail = message.partition(": ")
        if code in SKIP_REASONS:
            return cls(code, source, detail if sep else "", id)
        return cls("other", source, message, id)


def log_skip(skipped: Skipped) -> Skipped:
    """Log a skip (the first few per reason and process at WARNING) and return it unchanged."""
    _warned[skipped.reason] += 1
    level = logging.WARNING if _warned[skipped.reason] <= _WARN_LIMIT else logging.DEBUG
    detail = f": {skipped.detail}" if skipped.detail else ""
    logger.log(level, "skipping %s (%s)%s", skipped.source, skipped.reason, detail)
    return skipped


class SkipCounter:
    """Counts of skipped inputs by reason; ``update`` accepts a batch's ``skipped`` mapping."""

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
