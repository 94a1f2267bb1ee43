"""The only place that reads the time. Everything else is handed a Clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for deadlines)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (``advance``): the scheduler run on
    virtual time, by the tests and by benchmarks whose figures must not
    depend on the machine's speed."""

    def __init__(self, start: datetime, monotonic: float = 0.0) -> None:
        self.current = start
        self.mono = monotonic

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        self.mono += seconds
        return self.current


def utc_iso(moment: datetime) -> str:
    """UTC ISO-8601 with a trailing Z, second precision unless sub-second matters."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
