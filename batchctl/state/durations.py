"""How long items took: ``durations.json`` in the state directory.

One entry per item *and content* (``ordering.duration_key``: the item's
name with its snapshot's digest), so an edited test starts without history:

    {"schema_version": 1, "durations": {KEY: [SECONDS, SEEN]}}

SECONDS is a moving average of the passing runs' durations (each new one
weighs half), SEEN the Unix time of the last. The file is bounded: past
``max_entries`` the entries seen longest ago are dropped. It is a snapshot
and a journal (``JournaledFile``, like ``runs.json``): a worker appends what
it learned now and then (never per run) as one record under the file's
lock, O(learned) bytes, and the journal is folded into a new snapshot once
it has grown as large as the snapshot. Readers (a worker loading its
batch, ``status``) fold the journal into the snapshot without the lock:
O(entries), never the runs history.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S, JournaledFile

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
        self.max_entries = max_entries
        self.file = JournaledFile(
            state_dir / FILE_NAME,
            schema_version=SCHEMA_VERSION,
            collection="durations",
            fold=self._fold,
            lock_timeout=lock_timeout,
        )

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
        """Add the durations just learned: one record appended and fsynced
        under the lock, O(learned) bytes."""
        if not learned:
            return
        record = {
            "op": "learned",
            "seen": int(now.timestamp()),
            "durations": {key: round(seconds, 3) for key, seconds in learned.items()},
        }
        with self.file.locked():
            self.file.append([record])

    def _fold(self, document: dict[str, Any], record: Mapping[str, Any]) -> None:
        """One record into the document: each key's average moves half way to
        what was learned and goes to the end, so the entries are in the
        order they were last seen and the bound drops from the front.
        O(learned + entries dropped)."""
        if record.get("op") != "learned":
            return
        durations: dict[str, Any] = document["durations"]
        seen = record.get("seen", 0)
        for key, seconds in record.get("durations", {}).items():
            if not isinstance(seconds, int | float) or seconds < 0:
                continue
            before = _seconds(durations.pop(key, None))
            average = seconds if before is None else before + (seconds - before) * NEW_WEIGHT
            durations[key] = [round(average, 3), seen]
        overflow = len(durations) - self.max_entries
        if overflow > 0:
            for key in list(itertools.islice(durations, overflow)):
                del durations[key]


def _seconds(entry: object) -> float | None:
    if isinstance(entry, list) and entry and isinstance(entry[0], int | float):
        seconds = float(entry[0])
        return seconds if seconds >= 0 else None
    return None
