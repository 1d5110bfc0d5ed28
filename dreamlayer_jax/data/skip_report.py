"""Counting the items a reader skipped, with the reason for each.

Dataset readers must not stop at the first bad file of thousands: they skip it, record
why, and go on. The caller decides whether the count is acceptable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SkippedItem:
    """One item that could not be read: its path (or name) and the one-line reason."""

    path: str
    reason: str


@dataclass
class SkipReport:
    """Items read and items skipped by one pass of a reader."""

    loaded: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # e.g. "empty layers skipped"

    def add(self, path: object, reason: str) -> None:
        """Record that `path` was skipped because of `reason`."""
        self.skipped.append(SkippedItem(str(path), " ".join(str(reason).split())))

    def count(self, what: str, number: int = 1) -> None:
        """Count `number` more of `what` (parts of loaded items left out, and such)."""
        if number:
            self.counts[what] += number

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def reasons(self) -> Counter[str]:
        """How often each distinct reason occurred (reasons without the item's path)."""
        return Counter(item.reason.replace(item.path, "<item>") for item in self.skipped)

    def summary(self) -> str:
        """One line, e.g. `loaded 98, skipped 2, 3 empty layers skipped (first: a/scene.json:
        not valid JSON)`."""
        text = f"loaded {self.loaded}, skipped {self.num_skipped}"
        for what, number in sorted(self.counts.items()):
            text += f", {number} {what}"
        if self.skipped:
            first = self.skipped[0]
            reason = first.reason
            if not reason.startswith(first.path):  # most readers name the item themselves
                reason = f"{first.path}: {reason}"
            text += f" (first: {reason})"
        return text
