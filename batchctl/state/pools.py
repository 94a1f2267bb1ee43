"""Elastic machines: ``pools.json`` in the state directory.

Every machine a pool has asked for, from the request to its deprovision,
with the worker handling it now. Shared by every batch and worker: a
request is decided under the file's lock against the machines already
coming, so concurrent demand from several batches shares one request.
Readers ask by ``stat`` (see ``drains.py``); it is written only when a
machine changes state.

Machine states: ``provisioning`` (its provision command runs), ``starting``
(it exists; waiting for its health check to pass), ``ready`` (in the fleet,
taking runs), ``deprovisioning`` (its deprovision command runs; no runs).
The only ways forward are provisioning -> starting -> ready, and from any
state to deprovisioning (then gone); a change asked from another state (a
health check that passed after the machine was given up) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from batchctl.model.errors import StateUnreadable
from batchctl.model.fleet import Fleet, Machine, pool_machine
from batchctl.model.pools import Address, PoolSpec, retry_delay, to_request
from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S
from batchctl.state.jsonfile import JsonStateFile, ParsedWhileUnchanged

SCHEMA_VERSION = 1
FILE_NAME = "pools.json"
STATES = ("provisioning", "starting", "ready", "deprovisioning")


@dataclass(frozen=True)
class PoolMachine:
    name: str
    state: str
    since: datetime
    # The worker handling it now, and until when that holds.
    by: str | None = None
    until: datetime | None = None
    address: Address | None = None
    ready_at: datetime | None = None
    # Why it is being deprovisioned, or what went wrong last.
    note: str | None = None
    # Counted as a failed machine (never became healthy) when it goes.
    failed: bool = False


@dataclass(frozen=True)
class PoolState:
    next_number: int = 1
    machines: Mapping[str, PoolMachine] = field(default_factory=dict)
    # Failed provisions in a row (capacity errors included), and when the
    # next may be tried.
    failures_in_row: int = 0
    retry_at: datetime | None = None
    # Machines that were provisioned but never became healthy, and provisions
    # that failed (not capacity errors), since the pool was first used.
    failed_total: int = 0
    last_error: str | None = None

    def count(self, *states: str) -> int:
        return sum(1 for machine in self.machines.values() if machine.state in states)


class PoolStore:
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.file = JsonStateFile(
            state_dir / FILE_NAME,
            schema_version=SCHEMA_VERSION,
            collection="pools",
            lock_timeout=lock_timeout,
        )
        self._pools: ParsedWhileUnchanged[dict[str, PoolState]] = ParsedWhileUnchanged(
            self.file, self._parse, dict
        )

    @property
    def path(self) -> Path:
        return self.file.path

    def pools(self) -> Mapping[str, PoolState]:
        """Every pool's machines. One ``stat`` while nothing changed."""
        return self._pools.get()

    # -- changes -------------------------------------------------------------

    def _change(
        self, pool: str, change: Callable[[PoolState], tuple[PoolState | None, Any]]
    ) -> Any:
        def apply(document: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
            current = self._parse(document).get(pool, PoolState())
            after, result = change(current)
            if after is None:
                return None, result
            document["pools"][pool] = self._dump(after)
            return document, result

        return self.file.update(apply)

    def request(
        self, spec: PoolSpec, *, demand: int, by: str, now: datetime, hold_s: float
    ) -> list[str]:
        """Provision requests for ``demand`` waiting items, decided against
        the machines already alive or coming, under the lock: the names of
        the machines ``by`` is now to provision (often none)."""

        def change(state: PoolState) -> tuple[PoolState | None, list[str]]:
            if state.retry_at is not None and state.retry_at > now:
                return None, []
            alive = len(state.machines)
            coming = state.count("provisioning", "starting")
            count = to_request(
                demand=demand,
                slots=spec.slots,
                coming=coming,
                alive=alive,
                minimum=spec.min,
                maximum=spec.max,
            )
            if count == 0:
                return None, []
            machines = dict(state.machines)
            names = []
            number = state.next_number
            for _ in range(count):
                name = spec.machine_name(number)
                number += 1
                machines[name] = PoolMachine(
                    name=name,
                    state="provisioning",
                    since=now,
                    by=by,
                    until=now + timedelta(seconds=hold_s),
                )
                names.append(name)
            return replace(state, next_number=number, machines=machines), names

        result: list[str] = self._change(spec.name, change)
        return result

    def provisioned(self, pool: str, name: str, address: Address, *, now: datetime) -> bool:
        """``provisioning`` -> ``starting``. False (nothing changed) from any
        other state: the machine was given up meanwhile."""

        def change(state: PoolState) -> tuple[PoolState | None, bool]:
            machine = state.machines.get(name)
            if machine is None or machine.state != "provisioning":
                return None, False
            started = replace(machine, state="starting", address=address, since=now)
            return replace(state, machines={**state.machines, name: started}), True

        result: bool = self._change(pool, change)
        return result

    def provision_failed(
        self, spec: PoolSpec, name: str, *, capacity: bool, note: str, now: datetime
    ) -> None:
        """The machine was not made: forget it, and wait before the next try."""

        def change(state: PoolState) -> tuple[PoolState | None, None]:
            machines = dict(state.machines)
            machines.pop(name, None)
            failures = state.failures_in_row + 1
            delay = retry_delay(failures, spec.retry_every, spec.retry_every_max)
            return (
                replace(
                    state,
                    machines=machines,
                    failures_in_row=failures,
                    retry_at=now + timedelta(seconds=delay),
                    failed_total=state.failed_total + (0 if capacity else 1),
                    last_error=note,
                ),
                None,
            )

        self._change(spec.name, change)

    def ready(self, pool: str, name: str, *, now: datetime) -> bool:
        """``starting`` -> ``ready``. False (nothing changed) from any other
        state: a check that passed after the machine was taken out (its
        ready_timeout ran out) must not put it back while it is deprovisioned."""

        def change(state: PoolState) -> tuple[PoolState | None, bool]:
            machine = state.machines.get(name)
            if machine is None or machine.state != "starting":
                return None, False
            machines = {
                **state.machines,
                name: replace(machine, state="ready", ready_at=now, by=None, until=None),
            }
            return replace(state, machines=machines, failures_in_row=0, retry_at=None), True

        result: bool = self._change(pool, change)
        return result

    def deprovisioning(
        self,
        pool: str,
        name: str,
        *,
        by: str,
        now: datetime,
        hold_s: float,
        note: str,
        failed: bool = False,
        address: Address | None = None,
    ) -> bool:
        """Take the machine out (no run goes to it from now on) for ``by`` to
        deprovision. False if it is gone or another worker handles it.
        ``address``: where it is, when only now known (a provision whose
        worker died printed it)."""

        def change(state: PoolState) -> tuple[PoolState | None, bool]:
            machine = state.machines.get(name)
            if machine is None:
                return None, False
            held_elsewhere = machine.by not in (None, by) and machine.until and machine.until > now
            if machine.state == "deprovisioning" and held_elsewhere:
                return None, False
            changed = replace(
                machine,
                state="deprovisioning",
                since=now,
                by=by,
                until=now + timedelta(seconds=hold_s),
                note=note,
                failed=failed or machine.failed,
                address=address or machine.address,
            )
            return replace(state, machines={**state.machines, name: changed}), True

        result: bool = self._change(pool, change)
        return result

    def deprovisioned(self, pool: str, name: str) -> None:
        def change(state: PoolState) -> tuple[PoolState | None, None]:
            machine = state.machines.get(name)
            if machine is None:
                return None, None
            machines = dict(state.machines)
            del machines[name]
            if not machine.failed:
                return replace(state, machines=machines), None
            return (
                replace(
                    state,
                    machines=machines,
                    failed_total=state.failed_total + 1,
                    last_error=f"{name}: {machine.note}",
                ),
                None,
            )

        self._change(pool, change)

    def take_over(
        self, pool: str, name: str, *, by: str, now: datetime, hold_s: float
    ) -> PoolMachine | None:
        """Handle a machine whose worker's claim ran out (it died): the
        machine as taken, or None if it is not to be taken."""

        def change(state: PoolState) -> tuple[PoolState | None, PoolMachine | None]:
            machine = state.machines.get(name)
            if machine is None or machine.until is None or machine.until > now:
                return None, None
            taken = replace(machine, by=by, until=now + timedelta(seconds=hold_s))
            return replace(state, machines={**state.machines, name: taken}), taken

        result: PoolMachine | None = self._change(pool, change)
        return result

    # -- the file's entries ----------------------------------------------------

    @staticmethod
    def _dump(state: PoolState) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "next_number": state.next_number,
            "failures_in_row": state.failures_in_row,
            "retry_at": when(state.retry_at),
            "failed_total": state.failed_total,
            "last_error": state.last_error,
            "machines": {
                name: {
                    "state": m.state,
                    "since": m.since.isoformat(),
                    "by": m.by,
                    "until": when(m.until),
                    "address": m.address.__dict__ if m.address else None,
                    "ready_at": when(m.ready_at),
                    "note": m.note,
                    "failed": m.failed,
                }
                for name, m in state.machines.items()
            },
        }

    def _parse(self, document: Mapping[str, Any]) -> dict[str, PoolState]:
        pools: dict[str, PoolState] = {}
        for pool, raw in document["pools"].items():
            try:
                pools[pool] = self._pool(raw)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise StateUnreadable(
                    f"{self.file.path}: the entry of pool {pool!r} is damaged. "
                    "It was left untouched.",
                    details={"file": str(self.file.path), "pool": pool},
                ) from None
        return pools

    @staticmethod
    def _pool(raw: Mapping[str, Any]) -> PoolState:
        def when(value: object) -> datetime | None:
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        machines = {}
        for name, entry in raw["machines"].items():
            if entry["state"] not in STATES:
                raise ValueError(entry["state"])
            address = entry.get("address")
            machines[name] = PoolMachine(
                name=name,
                state=entry["state"],
                since=datetime.fromisoformat(entry["since"]),
                by=entry.get("by"),
                until=when(entry.get("until")),
                address=Address(**address) if address else None,
                ready_at=when(entry.get("ready_at")),
                note=entry.get("note"),
                failed=bool(entry.get("failed")),
            )
        return PoolState(
            next_number=int(raw["next_number"]),
            machines=machines,
            failures_in_row=int(raw.get("failures_in_row", 0)),
            retry_at=when(raw.get("retry_at")),
            failed_total=int(raw.get("failed_total", 0)),
            last_error=raw.get("last_error"),
        )


def with_pool_machines(
    fleet: Fleet,
    pools: Mapping[str, PoolState],
    warn: Callable[[str], None] = lambda message: None,
) -> Fleet:
    """The fleet with its pools' ready machines added (O(machines)): every
    process resolving the fleet, the executor of a run on such a machine
    included, knows where it is. A pool machine whose name the fleet already
    has (an inventory's machine: the file's are refused when it is read) is
    left out, and ``warn`` says so: one name must mean one machine."""
    names = {machine.name for machine in fleet.machines}
    added: list[Machine] = []
    for spec in fleet.pools:
        state = pools.get(spec.name)
        if state is None:
            continue
        for name, machine in sorted(state.machines.items()):
            if machine.state != "ready" or machine.address is None:
                continue
            if name in names:
                warn(
                    f"pool {spec.name}'s machine {name} left out of the fleet: "
                    "another machine has that name"
                )
                continue
            added.append(pool_machine(spec, name, machine.address))
    if not added:
        return fleet
    return replace(fleet, machines=(*fleet.machines, *added))
