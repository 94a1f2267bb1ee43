"""How long items took: ``durations.json`` in the state directory.

One entry per item *and content* (``ordering.duration_key``: the item's
name with its snapshot's digest), so an edited test starts without history:

    {"schema_version": 1, "durations": {KEY: [SECONDS, SEEN]}}

SECONDS is a moving average of the passing runs' durations (each new one
weighs half), SEEN the Unix time of the last. The file is bounded: past
``MAX_ENTRIES`` the entries seen longest ago are dropped. Workers add what
they learned in one write now and then (never per run) under the file's
lock, by temp file, fsync and rename (``JsonStateFile``); readers (a worker
loading its batch, ``status``) read it whole without the lock: O(entries),
never the runs history.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S
from batchctl.state.jsonfile import JsonStateFile

SCHEMA_VERSION = 1
FILE_NAME = "durations.json"
# About 50 bytes an entry: a few MB at most, read in well under a second.
MAX_ENTRIES = 100_000
# How much a new duration weighs against what was known.
NEW_WEIGHT = 0.5


class DurationStore:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.file = JsonStateFile(
            state_dir / FILE_NAME,
            schema_version=SCHEMA_VERSION,
            collection="durations",
            lock_timeout=lock_timeout,
        )
        self.max_entries = max_entries

    def expected(self, keys: Collection[str] | None = None) -> dict[str, float]:
        """Expected seconds by key (of ``keys`` only, if given); entries that
        are not a pair of numbers are passed over. O(entries)."""
        known: dict[str, float] = {}
        for key, entry in self.file.read()["durations"].items():
            if keys is not None and key not in keys:
                continue
            seconds = _seconds(entry)
            if seconds is not None:
                known[key] = seconds
        return known

    def record(self, learned: Mapping[str, float], now: datetime) -> None:
        """Fold the durations just learned into the file, in one write.
        O(entries + learned), and O(entries log entries) when the bound
        is passed."""
        if not learned:
            return
        seen = int(now.timestamp())

        def change(document: dict[str, Any]) -> tuple[dict[str, Any], None]:
            durations: dict[str, Any] = document["durations"]
            for key, seconds in learned.items():
                before = _seconds(durations.get(key))
                average = (
                    seconds if before is None else before * (1 - NEW_WEIGHT) + seconds * NEW_WEIGHT
                )
                durations.pop(key, None)  # re-inserted last: newest at the end
                durations[key] = [round(average, 3), seen]
            if len(durations) > self.max_entries:
                newest = sorted(durations.items(), key=lambda pair: _seen(pair[1]))
                document["durations"] = dict(newest[-self.max_entries :])
            return document, None

        self.file.update(change)


def _seconds(entry: object) -> float | None:
    if isinstance(entry, list) and entry and isinstance(entry[0], int | float):
        seconds = float(entry[0])
        return seconds if seconds >= 0 else None
    return None


def _seen(entry: object) -> float:
    if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], int | float):
        return float(entry[1])
    return 0.0
