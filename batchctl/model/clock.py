"""The only place that reads the time. Everything else is handed a Clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
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


def utc_iso(moment: datetime) -> str:
    """UTC ISO-8601 with a trailing Z, second precision unless sub-second matters."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
