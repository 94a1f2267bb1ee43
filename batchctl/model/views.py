"""What `run`, `status` and `list` show: batch decisions joined with run outcomes.

These are the JSON shapes users script against (SPEC §8). Fields may be
added; none is removed or renamed without bumping the envelope's schema_version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from batchctl.model.clock import utc_iso
from batchctl.model.fleet import Fleet, Machine
from batchctl.model.models import Batch, Entry, Item, ItemState, Run
from batchctl.model.policy import item_is_final, item_outcome, unmet_needs


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
    counts: dict[str, int]
    items: list[ItemView]


class BatchSummary(View):
    id: str
    plan_hash: str
    staging: str
    source: str
    created_at: datetime
    done: bool
    counts: dict[str, int]


class BatchList(View):
    batches: list[BatchSummary]


def run_view(run: Run) -> RunView:
    # Built from validated records: constructed without validating again,
    # which is most of the cost of a 100,000-item view.
    return RunView.model_construct(
        id=run.id,
        status=run.status.value,
        exit_code=run.exit_code,
        error_code=run.error_code,
        message=run.message,
        started_at=run.started_at,
        ended_at=run.ended_at,
        log_path=run.log_path,
        artifacts_path=run.artifacts_path,
    )


@dataclass(frozen=True)
class FleetContext:
    """What explaining a queued item needs beyond the batch: the fleet, how
    many slots each machine has taken, and the time."""

    fleet: Fleet
    held: Mapping[str, int]
    now: datetime
    # Filled as items are explained: every item with one selector shares its
    # answer, so a view costs O(items + selectors x machines).
    by_selector: dict[str, str] = field(default_factory=dict)

    def selector_reason(self, selector: str) -> str:
        if selector not in self.by_selector:
            self.by_selector[selector] = self._selector_reason(selector)
        return self.by_selector[selector]

    def _selector_reason(self, selector: str) -> str:
        kind, _, value = selector.partition(":")
        matching = self.fleet.matching(selector)
        if not matching:
            return f"no machine matches {selector}"
        if not any(m.dispatchable for m in matching):
            return f"every machine matching {selector} is offline"
        if all(self.held.get(m.name, 0) >= m.slots for m in matching):
            if kind == "machine":
                return f"machine {value} busy"
            count = len(matching)
            return f"all {count} machine{'s' if count != 1 else ''} with tag {value} busy"
        return "ready; dispatching on the next tick"


def attempt_view(run: Run) -> AttemptView:
    return AttemptView(**run_view(run).model_dump(), attempt=run.attempt, machine=run.machine)


def _reason(
    entry: Entry,
    item: Item,
    batch: Batch,
    runs: Mapping[str, Run],
    context: FleetContext | None,
    entries: Mapping[str, Entry],
) -> str | None:
    """Why a queued item is not running yet, in words."""
    if item.state is ItemState.DISPATCHED and item.run_id and item.run_id not in runs:
        return f"its run {item.run_id} is not in runs.json (removed by hand?)"
    if item.state is not ItemState.QUEUED:
        return None
    items = batch.items
    waiting_on = unmet_needs(entry, items, runs)
    if waiting_on:
        return "waiting on " + ", ".join(
            f"{name} ({item_outcome(entries[name], items[name], items, runs)})"
            for name in waiting_on
        )
    if context is None:
        return "ready; waiting for a matching machine"
    if item.not_before is not None and item.not_before > context.now:
        return f"retry backoff until {utc_iso(item.not_before)}"
    return context.selector_reason(entry.selector)


def item_view(
    entry: Entry,
    item: Item,
    batch: Batch,
    runs: Mapping[str, Run],
    context: FleetContext | None = None,
    entries: Mapping[str, Entry] | None = None,
) -> ItemView:
    run = runs.get(item.run_id or "")
    if entries is None:
        entries = {e.name: e for e in batch.entries}
    return ItemView.model_construct(
        name=item.name,
        selector=entry.selector,
        needs=list(entry.needs),
        state=item.state.value,
        outcome=item_outcome(entry, item, batch.items, runs),
        attempt=item.attempt,
        run_id=item.run_id,
        machine=item.machine,
        error_code=item.error_code.value if item.error_code else None,
        reason=_reason(entry, item, batch, runs, context, entries),
        blame=item.blame,
        history=list(item.history),
        run=run_view(run) if run is not None else None,
    )


def batch_done(batch: Batch, runs: Mapping[str, Run]) -> bool:
    """Every item final. In a cancelled batch nothing is retried, so an
    interrupted run with retries left is final too."""
    return all(
        item_is_final(
            entry,
            batch.items[entry.name],
            runs.get(batch.items[entry.name].run_id or ""),
            cancelled=batch.cancelled,
        )
        for entry in batch.entries
    )


def batch_view(
    batch: Batch, runs: Mapping[str, Run], context: FleetContext | None = None
) -> BatchView:
    entries = {entry.name: entry for entry in batch.entries}
    items = [
        item_view(entry, batch.items[entry.name], batch, runs, context, entries)
        for entry in batch.entries
    ]
    return BatchView(
        id=batch.id,
        plan_hash=batch.plan_hash,
        staging=batch.staging,
        source=batch.source,
        created_by=batch.created_by,
        created_at=batch.created_at,
        expected_count=batch.expected_count,
        done=batch_done(batch, runs),
        cancelled=batch.cancelled,
        queue_timeout_s=batch.queue_timeout_s,
        counts=dict(Counter(item.outcome for item in items)),
        items=items,
    )


def batch_summary(view: BatchView) -> BatchSummary:
    return BatchSummary(
        id=view.id,
        plan_hash=view.plan_hash,
        staging=view.staging,
        source=view.source,
        created_at=view.created_at,
        done=view.done,
        counts=view.counts,
    )


class MachineRunView(View):
    run_id: str
    batch_id: str
    item: str
    status: str


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


class MachineList(View):
    source: str
    machines: list[MachineView]


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


def machine_views(fleet: Fleet, live_runs: list[Run]) -> list[MachineView]:
    views = []
    for machine in fleet.machines:
        held = [run for run in live_runs if run.machine == machine.name]
        views.append(
            MachineView(
                name=machine.name,
                source=machine.source,
                transport=machine.transport,
                host=machine.host,
                os=machine.os,
                tags=list(machine.tags),
                slots=machine.slots,
                state=machine_state(machine, len(held)),
                runs=[
                    MachineRunView(
                        run_id=r.id, batch_id=r.batch_id, item=r.item, status=r.status.value
                    )
                    for r in held
                ],
            )
        )
    return views
