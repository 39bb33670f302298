"""The report: one :class:`CheckResult` per check, a summary line and the exit status."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    SKIP = "SKIP"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name:<36} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix else text


def on_asterisk(result: CheckResult, endpoint: int) -> CheckResult:
    """A check of one Asterisk among several, named by its position in ARI_URL."""
    return replace(result, name=f"[{endpoint}] {result.name}")


def summary(results: Sequence[CheckResult]) -> str:
    """The last line: how many checks ended in each status."""
    counts = {status: sum(r.status is status for r in results) for status in Status}
    return "doctor: " + ", ".join(f"{counts[s]} {s.value.lower()}" for s in Status if counts[s])


def exit_status(results: Iterable[CheckResult]) -> int:
    return 1 if any(r.status is Status.FAIL for r in results) else 0
