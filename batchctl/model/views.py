"""What `run`, `status` and `list` show: batch decisions joined with run outcomes.

These are the JSON shapes users script against (SPEC §8). Fields may be
added; none is removed or renamed without bumping the envelope's schema_version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from batchctl.model.clock import utc_iso
from batchctl.model.fleet import Drain, Fleet, Machine
from batchctl.model.health import MachineHealth, Quarantine
from batchctl.model.models import Run
from batchctl.model.ordering import DEFAULT_PRIORITY
from batchctl.model.viewdoc import run_document


class View(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunView(View):
    id: str
    status: str
    exit_code: int | None
    error_code: str | None
    message: str | None
    started_at: datetime | None
    ended_at: datetime | None
    log_path: str
    artifacts_path: str


class ItemView(View):
    name: str
    selector: str
    needs: list[str]
    state: str
    outcome: str
    attempt: int
    run_id: str | None
    machine: str | None
    error_code: str | None
    reason: str | None
    # What the reason is about, for scripts: needs, backoff, cap, drained,
    # quarantined, busy, offline, no_machine, provisioning, dispatching,
    # ready, run_missing.
    reason_code: str | None = None
    blame: str | None
    history: list[str]
    run: RunView | None


class AttemptView(RunView):
    """One attempt's run, as `status ID ITEM` lists them."""

    attempt: int
    machine: str


class ItemDetail(ItemView):
    batch_id: str
    dir: str
    timeout_s: int
    retries: int
    retry_on: list[str]
    attempts: list[AttemptView]


class BatchView(View):
    id: str
    plan_hash: str
    staging: str
    source: str
    created_by: str
    created_at: datetime
    expected_count: int
    done: bool
    cancelled: bool
    queue_timeout_s: int
    max_parallel: int | None = None
    priority: int = DEFAULT_PRIORITY
    counts: dict[str, int]
    items: list[ItemView]
    # While not done, if items have history: the seconds left, and when.
    eta_s: float | None = None
    eta: datetime | None = None


class BatchSummary(View):
    id: str
    plan_hash: str
    staging: str
    source: str
    created_at: datetime
    done: bool
    cancelled: bool
    counts: dict[str, int]

    @property
    def state(self) -> str:
        """What ``list`` shows and filters by: cancelled (whether or not its
        runs have stopped yet), else done or running."""
        if self.cancelled:
            return "cancelled"
        return "done" if self.done else "running"


class BatchList(View):
    batches: list[BatchSummary]


@dataclass(frozen=True)
class FleetContext:
    """What explaining a queued item needs beyond the batch: the fleet, how
    many slots each machine has taken, which machines are drained, and the time."""

    fleet: Fleet
    held: Mapping[str, int]
    now: datetime
    drained: Mapping[str, Drain] = field(default_factory=dict)
    quarantined: Mapping[str, Quarantine] = field(default_factory=dict)
    # Filled as items are explained: every item with one selector shares its
    # answer, so a view costs O(items + selectors x machines).
    by_selector: dict[str, tuple[str, str]] = field(default_factory=dict)

    def queued_reason(self, selector: str, not_before: str | None) -> tuple[str, str]:
        if not_before is not None:
            until = datetime.fromisoformat(not_before)
            if until > self.now:
                return "backoff", f"retry backoff until {utc_iso(until)}"
        if selector not in self.by_selector:
            self.by_selector[selector] = self._selector_reason(selector)
        return self.by_selector[selector]

    def _selector_reason(self, selector: str) -> tuple[str, str]:
        kind, _, value = selector.partition(":")
        matching = self.fleet.matching(selector)
        if not matching:
            pools = self.fleet.pools_serving(selector)
            if pools:
                names = ", ".join(pool.name for pool in pools)
                return "provisioning", f"waiting for a machine of pool {names} to be provisioned"
            return "no_machine", f"no machine matches {selector}"
        online = [m for m in matching if m.dispatchable]
        if not online:
            return "offline", f"every machine matching {selector} is offline"
        in_service = [m for m in online if m.name not in self.drained]
        usable = [m for m in in_service if m.name not in self.quarantined]
        if not in_service:
            drains = "; ".join(
                f"{m.name}: {self.drained[m.name].reason}" for m in online[:DRAINS_SHOWN]
            )
            more = f" and {len(online) - DRAINS_SHOWN} more" if len(online) > DRAINS_SHOWN else ""
            return "drained", f"every machine matching {selector} is drained ({drains}{more})"
        if not usable:
            out = "; ".join(
                f"{m.name}: {self.quarantined[m.name].reason}, next health check at "
                f"{utc_iso(self.quarantined[m.name].next_check_at)}"
                for m in in_service[:DRAINS_SHOWN]
            )
            more = (
                f" and {len(in_service) - DRAINS_SHOWN} more"
                if len(in_service) > DRAINS_SHOWN
                else ""
            )
            return (
                "quarantined",
                f"every machine matching {selector} that is in service is quarantined "
                f"({out}{more})",
            )
        with_room = [m for m in usable if self.held.get(m.name, 0) < m.slots]
        if not with_room:
            drained = len(online) - len(in_service)
            out_sick = len(in_service) - len(usable)
            asides = [
                *([f"{drained} drained"] if drained else []),
                *([f"{out_sick} quarantined"] if out_sick else []),
            ]
            aside = f" ({', '.join(asides)})" if asides else ""
            if kind == "machine":
                return "busy", f"machine {value} busy"
            count = len(usable)
            return (
                "busy",
                f"all {count} machine{'s' if count != 1 else ''} with tag {value} busy{aside}",
            )
        capped = self._reached_caps()
        if capped and all(any(tag in capped for tag in self.fleet.caps_of(m)) for m in with_room):
            tags = sorted(
                {tag for m in with_room for tag in self.fleet.caps_of(m) if tag in capped}
            )
            caps = ", ".join(f"{tag}: {self.fleet.limits[tag]}" for tag in tags)
            return "cap", f"fleet limits reached ({caps} runs at once)"
        return "dispatching", "ready; dispatching on the next tick"

    def _reached_caps(self) -> set[str]:
        return {
            tag
            for tag, names in self.fleet.limited.items()
            if sum(self.held.get(name, 0) for name in names) >= self.fleet.limits[tag]
        }


# How many drained machines a waiting item's reason names.
DRAINS_SHOWN = 3


def attempt_document(run: Mapping[str, Any], runs_prefix: str) -> dict[str, Any]:
    return {
        **run_document(run, runs_prefix),
        "attempt": run["attempt"],
        "machine": run["machine"],
    }


def batch_summary(view: Mapping[str, Any]) -> BatchSummary:
    return BatchSummary.model_validate({field: view[field] for field in BatchSummary.model_fields})


class MachineRunView(View):
    run_id: str
    batch_id: str
    item: str
    status: str


class DrainView(View):
    reason: str
    since: datetime
    by: str


class QuarantineView(View):
    since: datetime
    reason: str
    checks: int
    next_check_at: datetime
    last_check: str | None


class HealthView(View):
    """A machine's health, when there is something to say: the
    infrastructure failures in a row counted against it, its quarantine,
    or why a quarantine due was held back."""

    failures: int
    quarantine: QuarantineView | None = None
    held_back: str | None = None


class NodeView(View):
    """A node of a Slurm machine's cluster, as ``sinfo`` reports it."""

    name: str
    state: str
    features: list[str]
    cpus: str


class MachineView(View):
    name: str
    source: str
    transport: str
    host: str | None
    os: str
    tags: list[str]
    slots: int
    state: str
    runs: list[MachineRunView]
    # Set while ``machines drain`` keeps the machine out of dispatch.
    drain: DrainView | None = None
    # Set while it has failures counted, or is quarantined.
    health: HealthView | None = None
    # A slurm machine's nodes, and why they could not be read if not.
    nodes: list[NodeView] | None = None
    nodes_error: str | None = None


class PoolView(View):
    """An elastic pool: its bounds and how its machines stand."""

    name: str
    tags: list[str]
    min: int
    max: int
    idle_timeout_s: int
    # Machine name -> provisioning, starting, ready or deprovisioning.
    machines: dict[str, str]
    # Machines that never became healthy and provisions that failed.
    failed: int
    last_error: str | None
    # After a capacity error or a failed provision: no request before then.
    retry_at: datetime | None


class MachineList(View):
    source: str
    machines: list[MachineView]
    pools: list[PoolView] = []


def machine_state(machine: Machine, held: int) -> str:
    """``offline`` when an inventory says so (it gets no runs), ``unknown``
    when a discovered machine's state was not reported, else ``busy`` when
    every slot holds a run and ``idle`` while one is free."""
    if machine.online is False:
        return "offline"
    if held >= machine.slots:
        return "busy"
    if machine.online is None and machine.source.startswith("inventory"):
        return "unknown"
    return "idle"


def health_view(health: MachineHealth | None) -> HealthView | None:
    if health is None or health.empty:
        return None
    quarantine = health.quarantine
    return HealthView(
        failures=len(health.streak),
        quarantine=QuarantineView(
            since=quarantine.since,
            reason=quarantine.reason,
            checks=quarantine.checks,
            next_check_at=quarantine.next_check_at,
            last_check=quarantine.last_check,
        )
        if quarantine
        else None,
        held_back=health.held_back,
    )


def machine_views(
    fleet: Fleet,
    live_runs: list[Run],
    drained: Mapping[str, Drain] | None = None,
    health: Mapping[str, MachineHealth] | None = None,
) -> list[MachineView]:
    drained = drained or {}
    health = health or {}
    by_machine: dict[str, list[Run]] = {}
    for run in live_runs:
        by_machine.setdefault(run.machine, []).append(run)
    views = []
    for machine in fleet.machines:
        held = by_machine.get(machine.name, [])
        drain = drained.get(machine.name)
        sick = health.get(machine.name)
        if drain:
            state = "drained"
        elif sick is not None and sick.quarantine is not None:
            state = "quarantined"
        else:
            state = machine_state(machine, len(held))
        views.append(
            MachineView(
                name=machine.name,
                source=machine.source,
                transport=machine.transport,
                host=machine.host,
                os=machine.os,
                tags=list(machine.tags),
                slots=machine.slots,
                state=state,
                runs=[
                    MachineRunView(
                        run_id=r.id, batch_id=r.batch_id, item=r.item, status=r.status.value
                    )
                    for r in held
                ],
                drain=DrainView(reason=drain.reason, since=drain.since, by=drain.by)
                if drain
                else None,
                health=health_view(sick),
            )
        )
    return views
