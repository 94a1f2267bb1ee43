"""One tick of dispatching a batch: ``Scheduler.step(batch_id, now)``.

Each step does one bounded unit of work and takes the time as an argument, so
tests drive it tick by tick with a fake clock and a fake transport. Every
decision of a tick is applied in one locked write of batches.json (fenced by
the worker's lease) and every run of a tick is prepared in one locked write of
runs.json, so large batches do not rewrite the files once per item.

Order within a step, and why:
1. reap — runs whose executor is gone end ``interrupted``;
2. retry — finished attempts with attempts left go back to queued;
3. cascade — queued items whose needs can no longer pass are skipped;
4. dispatch — ready items are prepared (runs lock) on idle machines;
5. record — all decisions are merged into the batch (batches lock);
6. start — only runs whose dispatch was recorded are started, so a run that
   lost a race (e.g. with ``cancel``) never executes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from batchctl.model.fleet import Fleet, Machine
from batchctl.model.models import Batch, Entry, Item, ItemState, Run, RunStatus, SkipCode
from batchctl.model.policy import (
    Backoff,
    item_is_final,
    item_passed,
    prefer_fresh_machines,
    ready_since,
    retry_delay,
    retry_due,
    unmet_needs,
)
from batchctl.model.views import batch_done
from batchctl.state.batches import BatchStore
from batchctl.state.runs import Answer, PrepareRequest, RunStore, SlotClaim
from batchctl.transports.base import Transport


@dataclass
class StepReport:
    done: bool
    dispatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SchedulerSettings:
    # A pending run nobody claimed for this long was prepared by a worker that
    # died before starting it; the current lease holder starts it.
    launch_grace_s: float = 30.0
    # Another host's executor that has not heartbeated for this long is gone.
    executor_stale_s: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)


def blame_of(item: Item) -> str:
    """``name#attempt`` of the root failure an item stands for."""
    if item.state is ItemState.SKIPPED and item.error_code is SkipCode.DEP_FAILED and item.blame:
        return item.blame
    return f"{item.name}#{item.attempt}"


class Scheduler:
    def __init__(
        self,
        *,
        batches: BatchStore,
        runs: RunStore,
        fleet: Fleet,
        transports: Mapping[str, Transport],
        lease_token: str | None,
        settings: SchedulerSettings,
        hash_dir: Callable[[Path], str],
        this_host: str,
        older_batches: Callable[[Batch, datetime], list[Batch]] | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.batches = batches
        self.runs = runs
        self.fleet = fleet
        self.transports = transports
        self.lease_token = lease_token
        self.settings = settings
        self.hash_dir = hash_dir
        self.this_host = this_host
        self.older_batches = older_batches or (lambda batch, now: [])
        self.uniform = uniform
        self._started: set[str] = set()

    def _transport(self, machine_name: str) -> Transport | None:
        machine = self.fleet.get(machine_name)
        return self.transports.get(machine.transport) if machine else None

    def _executor_gone(self, run: Run, now: datetime) -> bool:
        transport = self._transport(run.machine)
        if run.executor_host not in (None, self.this_host):
            beat = run.heartbeat_at or run.started_at or run.created_at
            return now - beat > timedelta(seconds=self.settings.executor_stale_s)
        return transport is None or not transport.alive(run)

    def _runs_of(self, batch: Batch) -> dict[str, Run]:
        return self.runs.get_many(item.run_id for item in batch.items.values() if item.run_id)

    def step(self, batch_id: str, now: datetime) -> StepReport:
        batch = self.batches.get(batch_id)
        report = StepReport(done=False)
        runs = self._runs_of(batch)

        if self._reap(batch, runs, now, report):
            runs = self._runs_of(batch)  # the reap changed some runs' status

        proposals: dict[str, Item] = {}
        self._retry_and_cascade(batch, runs, now, proposals, report)
        started = self._dispatch(batch, runs, now, proposals, report)

        merged = (
            self.batches.apply_items(batch.id, proposals, lease_token=self.lease_token)
            if proposals
            else batch
        )
        for run in started:
            item = merged.items[run.item]
            if (
                item.run_id == run.id
                and item.state is ItemState.DISPATCHED
                and not merged.cancelled
            ):
                self._start(run)
                report.dispatched.append(run.item)
            else:
                # The dispatch lost a race (cancel, or another writer): never run it.
                self.runs.finish(run.id, RunStatus.INTERRUPTED, now=now, message="superseded")
        report.done = batch_done(merged, self._runs_of(merged))
        return report

    def _start(self, run: Run) -> None:
        transport = self._transport(run.machine)
        if transport is not None:
            self._started.add(run.id)
            transport.start(run)

    def _reap(
        self, batch: Batch, runs: Mapping[str, Run], now: datetime, report: StepReport
    ) -> bool:
        """End runs whose executor is gone (or whose batch was cancelled) and
        start prepared runs nobody started. True if any run was touched."""
        touched = False
        for item in batch.items.values():
            run = runs.get(item.run_id or "")
            if item.state is not ItemState.DISPATCHED or run is None or run.status.terminal:
                continue
            transport = self._transport(run.machine)
            if batch.cancelled and transport is not None:
                transport.terminate(run)
                touched = True
                continue
            if not run.claimed:
                age = now - run.created_at
                if run.id not in self._started and age > timedelta(
                    seconds=self.settings.launch_grace_s
                ):
                    self._start(run)
                continue
            if self._executor_gone(run, now):
                if transport is not None:
                    transport.terminate(run)
                else:
                    self.runs.finish(
                        run.id,
                        RunStatus.INTERRUPTED,
                        now=now,
                        message=f"machine {run.machine!r} left the fleet",
                    )
                report.interrupted.append(item.name)
                touched = True
        return touched

    def _retry_and_cascade(
        self,
        batch: Batch,
        runs: Mapping[str, Run],
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
    ) -> None:
        items = dict(batch.items)
        for entry in batch.entries:
            item = items[entry.name]
            run = runs.get(item.run_id or "")
            if not batch.cancelled and retry_due(entry, item, run):
                delay = retry_delay(item.attempt, self.settings.backoff, self.uniform)
                items[entry.name] = proposals[entry.name] = item.next_attempt(
                    now, not_before=now + timedelta(seconds=delay)
                )
                report.requeued.append(entry.name)

        # Entries are in authored order, which need not be topological; repeat
        # until no more skips cascade (bounded by the number of entries).
        changed = True
        while changed:
            changed = False
            for entry in batch.entries:
                item = items[entry.name]
                if item.state is not ItemState.QUEUED:
                    continue
                skip: tuple[SkipCode, str | None]
                if batch.cancelled:
                    skip = SkipCode.CANCELLED, None
                else:
                    failed = self._failed_need(entry, items, runs, batch)
                    if failed is None:
                        continue
                    skip = SkipCode.DEP_FAILED, blame_of(failed)
                items[entry.name] = proposals[entry.name] = item.skipped(skip[0], now, skip[1])
                report.skipped.append(entry.name)
                changed = True

    def _failed_need(
        self, entry: Entry, items: Mapping[str, Item], runs: Mapping[str, Run], batch: Batch
    ) -> Item | None:
        """The first needed item that is final without having passed."""
        entries = {e.name: e for e in batch.entries}
        for needed in entry.needs:
            need_item = items[needed]
            run = runs.get(need_item.run_id or "")
            if item_is_final(
                entries[needed], need_item, run, cancelled=batch.cancelled
            ) and not item_passed(need_item, run):
                return need_item
        return None

    def _candidates(self, entry: Entry) -> tuple[list[Machine], SkipCode | None]:
        """Machines that may take the entry now, or why it can never run.
        No machines and no code: every match is offline, so the item waits."""
        matching = self.fleet.matching(entry.selector)
        if not matching:
            return [], SkipCode.NO_MATCHING_MACHINE
        directory = Path(entry.abs_dir)
        if not directory.is_dir():
            return [], SkipCode.DIR_MISSING
        usable = [m for m in matching if (directory / m.entrypoint).is_file()]
        if not usable:
            return [], SkipCode.ENTRYPOINT_MISSING
        return [m for m in usable if m.dispatchable], None

    def _dispatch(
        self,
        batch: Batch,
        runs: Mapping[str, Run],
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
    ) -> list[Run]:
        if batch.cancelled:
            return []
        items = {**batch.items, **proposals}
        requests: list[PrepareRequest] = []
        for entry in batch.entries:
            item = items[entry.name]
            if item.state is not ItemState.QUEUED or unmet_needs(entry, items, runs):
                continue
            if item.not_before is not None and item.not_before > now:
                continue
            machines, skip = self._candidates(entry)
            if skip is not None:
                proposals[entry.name] = item.skipped(skip, now)
                report.skipped.append(entry.name)
                continue
            if not machines:
                self._expire(batch, entry.name, items, runs, now, proposals, report)
                continue
            requests.append(
                PrepareRequest(
                    batch_id=batch.id,
                    item=entry.name,
                    attempt=item.attempt,
                    candidates=prefer_fresh_machines(
                        [m.name for m in machines], self._failed_on(item)
                    ),
                    test_dir=entry.abs_dir,
                    test_dir_hash=self.hash_dir(Path(entry.abs_dir)),
                )
            )
        if not requests:
            return []
        results = self.runs.prepare_many(
            requests,
            slots={m.name: m.slots for m in self.fleet.machines},
            now=now,
            held_back=self._held_back(batch, now),
        )
        to_start: list[Run] = []
        for request, result in zip(requests, results, strict=True):
            if result.answer is Answer.BUSY or result.run is None:
                self._expire(batch, request.item, items, runs, now, proposals, report)
                continue
            run = result.run
            proposals[request.item] = items[request.item].model_copy(
                update={
                    "state": ItemState.DISPATCHED,
                    "run_id": run.id,
                    "machine": run.machine,
                    "updated_at": now,
                }
            )
            if result.answer is Answer.CREATED or (
                run.status is RunStatus.PENDING and not run.claimed and run.id not in self._started
            ):
                to_start.append(run)
        return to_start

    def _failed_on(self, item: Item) -> set[str]:
        """Machines where earlier attempts of this item did not pass."""
        if not item.history:
            return set()
        earlier = self.runs.get_many(item.history).values()
        return {run.machine for run in earlier if run.status is not RunStatus.SUCCEEDED}

    def _expire(
        self,
        batch: Batch,
        name: str,
        items: Mapping[str, Item],
        runs: Mapping[str, Run],
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
    ) -> None:
        """Skip an item no machine took within the batch's queue timeout."""
        entry = next(e for e in batch.entries if e.name == name)
        since = ready_since(entry, items[name], items, runs)
        if since is not None and now - since >= timedelta(seconds=batch.queue_timeout_s):
            proposals[name] = items[name].skipped(SkipCode.QUEUE_TIMEOUT, now)
            report.skipped.append(name)

    def _held_back(self, batch: Batch, now: datetime) -> list[SlotClaim]:
        """Older batches are served first: each of their ready items holds back
        a slot on a machine it could use."""
        claims: list[SlotClaim] = []
        for older in self.older_batches(batch, now):
            older_runs = self._runs_of(older)
            for entry in older.entries:
                item = older.items[entry.name]
                if item.state is not ItemState.QUEUED or unmet_needs(
                    entry, older.items, older_runs
                ):
                    continue
                if item.not_before is not None and item.not_before > now:
                    continue
                claims.append(SlotClaim([m.name for m in self.fleet.matching(entry.selector)]))
        return claims
