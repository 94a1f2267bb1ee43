"""Drained machines: ``machines.json`` in the state directory.

A drained machine finishes the runs it holds and takes no new one, for
every batch and every worker, until it is resumed. The file is small (one
entry per drained machine) and changed only under its lock, by temp file,
fsync and rename (``JsonStateFile``), so a reader without the lock sees the
old or the new file, never half of one.

Every worker asks at every step which machines are drained. That costs one
``stat`` while the file is unchanged: a rename puts a new inode in place, so
the file's identity (device, inode, size, mtime) changes with every write,
and only then is it read again. The cost never depends on the size of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from batchctl.model.errors import StateUnreadable
from batchctl.model.fleet import Drain
from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S
from batchctl.state.jsonfile import JsonStateFile, ParsedWhileUnchanged

SCHEMA_VERSION = 1
FILE_NAME = "machines.json"


class DrainStore:
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.file = JsonStateFile(
            state_dir / FILE_NAME,
            schema_version=SCHEMA_VERSION,
            collection="drained",
            lock_timeout=lock_timeout,
        )
        self._drained: ParsedWhileUnchanged[dict[str, Drain]] = ParsedWhileUnchanged(
            self.file, self._parse, dict
        )

    @property
    def path(self) -> Path:
        return self.file.path

    def drained(self) -> Mapping[str, Drain]:
        """Drained machines by name. One ``stat`` while nothing changed."""
        return self._drained.get()

    def drain(self, name: str, *, reason: str, by: str, now: datetime) -> tuple[Drain, bool]:
        """Drain ``name`` (again: its reason is replaced, its time kept).
        Returns the drain and whether the machine was drained before."""

        def change(document: dict[str, Any]) -> tuple[dict[str, Any], tuple[Drain, bool]]:
            self._parse(document)  # a damaged file is refused, never rewritten
            drained = document["drained"]
            before = drained.get(name)
            since = before["since"] if isinstance(before, dict) and "since" in before else None
            entry = {"reason": reason, "since": since or now.isoformat(), "by": by}
            drained[name] = entry
            return document, (self._drain_of(name, entry), before is not None)

        return self.file.update(change)

    def resume(self, name: str) -> Drain | None:
        """Take ``name`` back into dispatch; the drain it had, or None if it
        had none (nothing is written then)."""

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, Drain | None]:
            self._parse(document)  # a damaged file is refused, never rewritten
            entry = document["drained"].pop(name, None)
            if entry is None:
                return None, None
            return document, self._drain_of(name, entry)

        return self.file.update(change)

    def _parse(self, document: Mapping[str, Any]) -> dict[str, Drain]:
        return {name: self._drain_of(name, entry) for name, entry in document["drained"].items()}

    def _drain_of(self, name: str, entry: object) -> Drain:
        if isinstance(entry, dict):
            try:
                return Drain(
                    reason=str(entry["reason"]),
                    since=datetime.fromisoformat(entry["since"]),
                    by=str(entry.get("by", "")),
                )
            except (KeyError, TypeError, ValueError):
                pass
        raise StateUnreadable(
            f"{self.file.path}: the entry of machine {name!r} is damaged. It was left untouched.",
            details={"file": str(self.file.path), "machine": name},
        )
