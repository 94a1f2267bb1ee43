"""Machine health: ``health.json`` in the state directory.

One entry per machine that is failing or quarantined (a healthy machine has
none), so the file stays small. It is shared by every batch and worker and
survives their restarts: a machine quarantined by one batch's worker gets
no run from any other. Every change is made under the file's lock, by temp
file, fsync and rename (``JsonStateFile``).

Readers ask at every step; that costs one ``stat`` while the file is
unchanged (``ParsedWhileUnchanged``: a rename changes the file's identity). Run
ends are written only when they change something: an infrastructure
failure, or the first good end after some. A batch of passing runs on
healthy machines never writes here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from batchctl.model.errors import StateUnreadable
from batchctl.model.fleet import Fleet
from batchctl.model.health import (
    EndedRun,
    Failure,
    MachineHealth,
    Quarantine,
    after_check,
    after_end,
    is_infrastructure_failure,
    quarantine_due,
    quarantined,
    valve_holds,
)
from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S
from batchctl.state.jsonfile import JsonStateFile, ParsedWhileUnchanged

SCHEMA_VERSION = 1
FILE_NAME = "health.json"


class HealthStore:
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.file = JsonStateFile(
            state_dir / FILE_NAME,
            schema_version=SCHEMA_VERSION,
            collection="machines",
            lock_timeout=lock_timeout,
        )
        self._health: ParsedWhileUnchanged[dict[str, MachineHealth]] = ParsedWhileUnchanged(
            self.file, self._parse, dict
        )

    @property
    def path(self) -> Path:
        return self.file.path

    def health(self) -> Mapping[str, MachineHealth]:
        """Machines with something to say about their health, by name. One
        ``stat`` while nothing changed."""
        return self._health.get()

    def quarantined(self) -> dict[str, Quarantine]:
        return {
            name: health.quarantine
            for name, health in self.health().items()
            if health.quarantine is not None
        }

    def record_ends(self, ends: Sequence[EndedRun], fleet: Fleet, now: datetime) -> list[str]:
        """Count run ends against their machines; quarantine those that reach
        the threshold, as far as the valve allows. Returns the machines
        quarantined now. Ends that change nothing (a good end on a machine
        with no failures) are let go without taking the lock. O(ends)."""
        known = self.health()
        relevant = [
            end
            for end in ends
            if is_infrastructure_failure(end.status, end.error_code) or end.machine in known
        ]
        if not relevant:
            return []

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
            current = self._parse(document)
            changed: dict[str, MachineHealth] = {}
            for end in relevant:
                before = changed.get(end.machine, current.get(end.machine, MachineHealth()))
                after = after_end(before, end)
                if after != before:
                    changed[end.machine] = after
            taken: list[str] = []
            spec = fleet.health
            for name, health in sorted(changed.items()):
                machine = fleet.get(name)
                if machine is None or not quarantine_due(health, spec):
                    continue
                out = {
                    other: True
                    for other, state in {**current, **changed}.items()
                    if state.quarantine is not None and fleet.get(other) is not None
                }
                held = valve_holds(name, machine.tags, out, fleet.groups, spec)
                if held is None:
                    changed[name] = quarantined(health, spec, now)
                    taken.append(name)
                else:
                    changed[name] = MachineHealth(
                        streak=health.streak[-spec.failures :], held_back=held
                    )
            if not changed:
                return None, []
            for name, health in changed.items():
                self._store(document, name, health)
            return document, taken

        return self.file.update(change)

    def probe_failed(self, name: str, *, detail: str, fleet: Fleet, now: datetime) -> bool:
        """Quarantine a machine whose connectivity probe failed, as far as the
        valve allows. True if it is quarantined now."""
        machine = fleet.get(name)
        if machine is None:
            return False

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
            current = self._parse(document)
            health = current.get(name, MachineHealth())
            if health.quarantine is not None:
                return None, False
            out = {
                other: True
                for other, state in current.items()
                if state.quarantine is not None and fleet.get(other) is not None
            }
            held = valve_holds(name, machine.tags, out, fleet.groups, fleet.health)
            if held is not None:
                after = MachineHealth(streak=health.streak, held_back=held)
                if after == health:
                    return None, False
                self._store(document, name, after)
                return document, False
            reason = f"its connectivity probe failed ({detail})"
            self._store(document, name, quarantined(health, fleet.health, now, reason=reason))
            return document, True

        return self.file.update(change)

    def claim_check(self, name: str, *, by: str, now: datetime, hold_s: float) -> Quarantine | None:
        """Take the due health check of a quarantined machine, for ``hold_s``
        (a worker that dies meanwhile leaves it to another after that).
        None if it is not due, or another worker holds it."""

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, Quarantine | None]:
            health = self._parse(document).get(name)
            quarantine = health.quarantine if health else None
            if health is None or quarantine is None or quarantine.next_check_at > now:
                return None, None
            if quarantine.checking_until is not None and quarantine.checking_until > now:
                return None, None
            claimed = replace(
                quarantine, checking_by=by, checking_until=now + timedelta(seconds=hold_s)
            )
            self._store(document, name, MachineHealth(streak=health.streak, quarantine=claimed))
            return document, claimed

        # Without the lock first: most steps find no check due.
        health = self.health().get(name)
        if health is None or health.quarantine is None or health.quarantine.next_check_at > now:
            return None
        return self.file.update(change)

    def checked(
        self, name: str, *, by: str, passed: bool, detail: str, fleet: Fleet, now: datetime
    ) -> bool:
        """Record the health check ``by`` ran: the machine returns, or waits
        for its next check. False if the check was no longer ``by``'s to
        record (the machine was resumed, or another worker took it over)."""

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
            health = self._parse(document).get(name)
            if health is None or health.quarantine is None:
                return None, False
            if health.quarantine.checking_by != by:
                return None, False
            after = after_check(health, fleet.health, passed=passed, detail=detail, now=now)
            self._store(document, name, after)
            return document, True

        return self.file.update(change)

    def lift(self, name: str) -> Quarantine | None:
        """End a machine's quarantine (and its failure count) by hand; the
        quarantine it had, or None (nothing is written then)."""

        def change(document: dict[str, Any]) -> tuple[dict[str, Any] | None, Quarantine | None]:
            health = self._parse(document).get(name)
            if health is None:
                return None, None
            self._store(document, name, MachineHealth())
            return document, health.quarantine

        return self.file.update(change)

    # -- the file's entries ----------------------------------------------------

    @staticmethod
    def _store(document: dict[str, Any], name: str, health: MachineHealth) -> None:
        machines = document["machines"]
        if health.empty:
            machines.pop(name, None)
            return
        entry: dict[str, Any] = {
            "streak": [
                {
                    "batch": f.batch,
                    "item": f.item,
                    "run": f.run,
                    "code": f.code,
                    "at": f.at.isoformat(),
                }
                for f in health.streak
            ]
        }
        if health.held_back:
            entry["held_back"] = health.held_back
        quarantine = health.quarantine
        if quarantine is not None:
            entry["quarantine"] = {
                "since": quarantine.since.isoformat(),
                "reason": quarantine.reason,
                "checks": quarantine.checks,
                "next_check_at": quarantine.next_check_at.isoformat(),
                "last_check": quarantine.last_check,
                "checking_by": quarantine.checking_by,
                "checking_until": quarantine.checking_until.isoformat()
                if quarantine.checking_until
                else None,
            }
        machines[name] = entry

    def _parse(self, document: Mapping[str, Any]) -> dict[str, MachineHealth]:
        return {name: self._entry(name, entry) for name, entry in document["machines"].items()}

    def _entry(self, name: str, entry: object) -> MachineHealth:
        try:
            assert isinstance(entry, dict)
            streak = tuple(
                Failure(
                    batch=str(f["batch"]),
                    item=str(f["item"]),
                    run=str(f["run"]),
                    code=str(f["code"]),
                    at=datetime.fromisoformat(f["at"]),
                )
                for f in entry.get("streak", [])
            )
            raw = entry.get("quarantine")
            quarantine = None
            if raw is not None:
                until = raw.get("checking_until")
                quarantine = Quarantine(
                    since=datetime.fromisoformat(raw["since"]),
                    reason=str(raw["reason"]),
                    checks=int(raw["checks"]),
                    next_check_at=datetime.fromisoformat(raw["next_check_at"]),
                    last_check=raw.get("last_check"),
                    checking_by=raw.get("checking_by"),
                    checking_until=datetime.fromisoformat(until) if until else None,
                )
            held = entry.get("held_back")
            return MachineHealth(
                streak=streak, quarantine=quarantine, held_back=str(held) if held else None
            )
        except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
            raise StateUnreadable(
                f"{self.file.path}: the entry of machine {name!r} is damaged. "
                "It was left untouched.",
                details={"file": str(self.file.path), "machine": name},
            ) from None
