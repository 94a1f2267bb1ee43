"""One tick of dispatching a batch: ``Scheduler.step(batch_id, now)``.

The scheduler keeps each batch it steps in memory between ticks, with the
indexes a tick needs: who depends on whom, how many needs of each item have
not passed, which items are ready (per selector, longest critical path
first: the chain of expected work that hangs on them, computed at load from
the durations their earlier runs took), which wait out a retry backoff or a
queue timeout, and which runs are in flight. A tick reads only the journal
records appended since the last one (its subscriptions to both stores),
re-classifies the items those records touch, and dispatches ready items onto
free slots. Its cost is what changed plus what it dispatches, never the size
of the batch; only the first tick (or a tick after another process compacted
a file) loads the batch whole.

Order within a step, and why:
1. catch up — fold what other processes wrote (runs ended, cancel, retry);
2. reap — runs whose executor is gone are stopped and end ``interrupted``;
   pending runs nobody claimed within the grace are started again;
3. decide — retries, cascades and cancellations, applied to memory at once
   so a cascade runs through the whole chain in one tick;
4. dispatch — under the batches lock, fenced by the lease: prepare runs on
   free slots (runs lock) and record every decision of the tick in one
   append; a run exists only together with the decision that made it;
5. start — only runs whose dispatch was recorded are started.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from batchctl.engine.health import HealthKeeper
from batchctl.engine.lease import LeaseJudge
from batchctl.model.errors import StateError
from batchctl.model.fleet import Drain, Fleet, Machine
from batchctl.model.models import Batch, Entry, Item, ItemState, Run, RunStatus, SkipCode
from batchctl.model.ordering import (
    Contender,
    FairTurns,
    critical_path,
    duration_key,
    expected_durations,
)
from batchctl.model.policy import (
    Backoff,
    prefer_fresh_machines,
    ready_since,
    retry_delay,
    retry_due,
)
from batchctl.state.batches import BatchStore
from batchctl.state.durations import DurationStore
from batchctl.state.pools import PoolState, PoolStore
from batchctl.state.runs import Answer, PrepareRequest, RunStore, SlotClaim
from batchctl.transports.base import Transport


def why_unrunnable(
    abs_dir: str,
    matching: Sequence[Machine],
    *,
    dir_exists: Callable[[str], bool] = lambda path: Path(path).is_dir(),
    has_entrypoint: Callable[[str, str], bool] = lambda path, name: (Path(path) / name).is_file(),
) -> SkipCode | None:
    """Why an entry can never run on this fleet — no machine matches its
    selector, its directory is gone, or no matching machine's entrypoint is
    in it — or None. What the worker skips an item for, and what
    ``run --dry-run`` refuses a plan for."""
    if not matching:
        return SkipCode.NO_MATCHING_MACHINE
    if not dir_exists(abs_dir):
        return SkipCode.DIR_MISSING
    if not any(has_entrypoint(abs_dir, machine.entrypoint) for machine in matching):
        return SkipCode.ENTRYPOINT_MISSING
    return None


# A ready item in its selector's heap: the longest critical path first, then
# authored order.
ReadyEntry = tuple[float, int, str, int]


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
    # died before starting it, or its executor died before claiming it: the
    # current lease holder starts it again (a claim is exclusive, so it still
    # executes once).
    launch_grace_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    # Ready items longest critical path first; False: in authored order
    # (first in, first out), to measure what the critical path buys.
    critical_path_first: bool = True


class _Claims:
    """Slots held back for another batch's waiting items: per selector, how
    many it still wants and its machines (fleet order, popped from the end
    once they have no free slot), so all its claims in one dispatch cost
    O(its machines + claims)."""

    def __init__(self, wanted: list[tuple[int, list[str]]]) -> None:
        self.wanted = wanted

    def take(self, free: Mapping[str, int]) -> str | None:
        """A machine with a free slot for one more of its items, or None."""
        while self.wanted:
            count, machines = self.wanted[-1]
            while machines and free.get(machines[-1], 0) <= 0:
                machines.pop()
            if count > 0 and machines:
                self.wanted[-1] = (count - 1, machines)
                return machines[-1]
            self.wanted.pop()
        return None


def blame_of(item: Item) -> str:
    """``name#attempt`` of the root failure an item stands for."""
    if item.state is ItemState.SKIPPED and item.error_code is SkipCode.DEP_FAILED and item.blame:
        return item.blame
    return f"{item.name}#{item.attempt}"


class BatchMemory:
    """One batch as the scheduler holds it between ticks.

    ``classify(name)`` files an item where it belongs from its own state and
    two counters kept per item (needs not yet passed; the first need that
    ended without passing), so re-classifying costs O(1) plus, when an item
    becomes final, O(its dependents).
    """

    def __init__(
        self,
        batch: Batch,
        runs: Mapping[str, Run],
        *,
        first: Mapping[str, float] | None = None,
        learns: Callable[[Run], bool] = lambda run: True,
    ) -> None:
        """``first``: each item's expected longest chain of work left
        (``ordering.critical_path``); ready items with the longest go first,
        and without it they go in authored order. ``learns(run)``: whether
        a passing run's duration is worth keeping as the item's history."""
        self.id = batch.id
        self.created_at = batch.created_at
        self.cancelled = batch.cancelled
        self.queue_timeout_s = batch.queue_timeout_s
        self.max_parallel = batch.max_parallel
        self.priority = batch.priority
        self.entries = {entry.name: entry for entry in batch.entries}
        self.order = {entry.name: index for index, entry in enumerate(batch.entries)}
        self.items: dict[str, Item] = dict(batch.items)
        self.runs: dict[str, Run] = dict(runs)
        self.owner: dict[str, str] = {
            item.run_id: name for name, item in self.items.items() if item.run_id
        }
        self.dependents: dict[str, list[str]] = defaultdict(list)
        for entry in batch.entries:
            for needed in entry.needs:
                self.dependents[needed].append(entry.name)
        self.unmet = {entry.name: len(entry.needs) for entry in batch.entries}
        self.first_failed: dict[str, str] = {}
        self.passed: set[str] = set()
        self.final: set[str] = set()
        self.active: set[str] = set()
        self.first: Mapping[str, float] = first or {}
        self.learns = learns
        # Durations of passing runs seen since the last time they were kept.
        self.learned: dict[str, float] = {}
        # Off until the first settle: the items final when the batch is read
        # were learned by the worker that saw them end. Learned again at each
        # load (a takeover, a resume, a reload after compaction), old runs
        # would outweigh newer ones and look freshly seen.
        self.learning = False
        # selector -> heap of (minus the critical path, authored order, name, attempt)
        self.ready: dict[str, list[ReadyEntry]] = defaultdict(list)
        self.in_ready: set[tuple[str, int]] = set()
        self.backoff: list[tuple[datetime, int, str, int]] = []
        self.expiry: list[tuple[datetime, int, str, int]] = []
        self.to_retry: set[str] = set()
        self.to_skip: dict[str, tuple[SkipCode, str | None]] = {}
        self.dirty: set[str] = set(self.items)

    def run_of(self, name: str) -> Run | None:
        """The item's current run, while the scheduler still needs it (runs
        of final items nobody depends on are let go)."""
        run_id = self.items[name].run_id
        return self.runs.get(run_id) if run_id else None

    # -- bookkeeping of final items ------------------------------------------

    def _make_final(self, name: str, passed: bool) -> None:
        if name in self.final:
            return
        self.final.add(name)
        if passed and self.learning:
            self._learn(name)
        if name not in self.dependents:
            # Nobody will ask about this run again: a 100,000-item batch
            # keeps only the runs in flight and those dependents look at.
            self.runs.pop(self.items[name].run_id or "", None)
        if passed:
            self.passed.add(name)
            for dependent in self.dependents.get(name, ()):
                self.unmet[dependent] -= 1
                self.dirty.add(dependent)
        else:
            for dependent in self.dependents.get(name, ()):
                self.first_failed.setdefault(dependent, name)
                self.dirty.add(dependent)

    def _learn(self, name: str) -> None:
        run = self.run_of(name)
        if (
            run is not None
            and run.status is RunStatus.SUCCEEDED
            and run.started_at is not None
            and run.ended_at is not None
            and self.learns(run)
        ):
            key = duration_key(name, run.test_dir_hash)
            self.learned[key] = max(0.0, (run.ended_at - run.started_at).total_seconds())

    def _unmake_final(self, name: str) -> None:
        """A final item queued again (``retry``): its dependents may run after all."""
        if name not in self.final:
            return
        self.final.discard(name)
        if name in self.passed:
            self.passed.discard(name)
            for dependent in self.dependents.get(name, ()):
                self.unmet[dependent] += 1
        for dependent in self.dependents.get(name, ()):
            if self.first_failed.get(dependent) == name:
                del self.first_failed[dependent]
                for needed in self.entries[dependent].needs:
                    if needed in self.final and needed not in self.passed:
                        self.first_failed[dependent] = needed
                        break
            self.dirty.add(dependent)

    # -- classification ------------------------------------------------------

    def classify(self, name: str, now: datetime) -> None:
        item = self.items[name]
        self.to_retry.discard(name)
        self.to_skip.pop(name, None)
        if item.state is ItemState.SKIPPED:
            self.active.discard(name)
            self._make_final(name, passed=False)
            return
        if item.state is ItemState.DISPATCHED:
            run = self.run_of(name)
            if run is None:
                # Its record is gone (runs.json deleted): nobody will ever
                # record its end, so waiting for it would never finish.
                self.active.discard(name)
                self._make_final(name, passed=False)
                return
            if not run.status.terminal:
                self._unmake_final(name)
                self.active.add(name)
                return
            self.active.discard(name)
            if not self.cancelled and retry_due(self.entries[name], item, run):
                self._unmake_final(name)
                self.to_retry.add(name)
            else:
                self._make_final(name, passed=run.status is RunStatus.SUCCEEDED)
            return
        # queued
        self.active.discard(name)
        self._unmake_final(name)
        if self.cancelled:
            self.to_skip[name] = (SkipCode.CANCELLED, None)
        elif name in self.first_failed:
            self.to_skip[name] = (
                SkipCode.DEP_FAILED,
                blame_of(self.items[self.first_failed[name]]),
            )
        elif self.unmet[name] == 0:
            if item.not_before is not None and item.not_before > now:
                heapq.heappush(
                    self.backoff, (item.not_before, self.order[name], name, item.attempt)
                )
            else:
                self._make_ready(name, item, now)

    def _make_ready(self, name: str, item: Item, now: datetime) -> None:
        key = (name, item.attempt)
        if key in self.in_ready:
            return
        self.in_ready.add(key)
        entry = self.entries[name]
        heapq.heappush(
            self.ready[entry.selector],
            (-self.first.get(name, 0.0), self.order[name], name, item.attempt),
        )
        deadline = self.ready_since(name, item) + timedelta(seconds=self.queue_timeout_s)
        heapq.heappush(self.expiry, (deadline, self.order[name], name, item.attempt))

    def ready_since(self, name: str, item: Item) -> datetime:
        """When the item became ready (``policy.ready_since``: from stored
        times, so a restarted worker agrees), else when the batch was made.
        The runs of needed items are kept: they have dependents. O(needs), once."""
        return ready_since(self.entries[name], item, self.items, self.runs) or self.created_at

    def still_queued(self, name: str, attempt: int) -> bool:
        item = self.items[name]
        return item.state is ItemState.QUEUED and item.attempt == attempt

    def settle(self, now: datetime) -> None:
        """Re-classify every touched item until nothing more moves; backoffs
        that ran out become ready. O(touched + their dependents)."""
        while self.backoff and self.backoff[0][0] <= now:
            _, _, name, attempt = heapq.heappop(self.backoff)
            if self.still_queued(name, attempt):
                self.dirty.add(name)
        while self.dirty:
            batch_of_names, self.dirty = self.dirty, set()
            for name in sorted(batch_of_names, key=self.order.__getitem__):
                self.classify(name, now)
        self.learning = True

    @property
    def done(self) -> bool:
        return len(self.final) == len(self.items) and not self.to_retry and not self.to_skip


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
        lease_judge: LeaseJudge | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        snapshot_has_file: Callable[[str, str], bool] | None = None,
        drained: Callable[[], Mapping[str, Drain]] | None = None,
        durations: DurationStore | None = None,
        health: HealthKeeper | None = None,
        pools: PoolStore | None = None,
    ) -> None:
        self.batches = batches
        self.runs = runs
        self.fleet = fleet
        self.transports = transports
        self.lease_token = lease_token
        self.settings = settings
        self.hash_dir = hash_dir
        # Whether a stored snapshot holds a file (entries of batches made
        # with snapshots run those, not their directories).
        self.snapshot_has_file = snapshot_has_file
        # With a judge, live batches share the fleet fairly (``_precedence``);
        # without one, other batches are not considered.
        self.lease_judge = lease_judge
        self.uniform = uniform
        # How long items took before: read once per batch load, added to
        # by ``keep_durations``.
        self.durations = durations
        # Machines ``machines drain`` took out of dispatch, asked once a
        # dispatch (a stat while nothing changed): they finish what they hold.
        self.drained: Callable[[], Mapping[str, Drain]] = drained or dict
        self._last_drained: Mapping[str, Drain] = {}
        # Counts run ends against their machines and knows which machines
        # are quarantined (they take no runs, like drained ones).
        self.health = health
        # Where each pool machine stands: one taken out for deprovisioning
        # (by any worker) takes no run, whatever this scheduler's fleet,
        # reloaded only when its own pool keeper sees a change, still says.
        self.pools = pools
        self._last_pool_states: dict[str, str] = {}
        self._pools_read: Mapping[str, PoolState] | None = None
        self._ended: list[Run] = []
        # Runs each capped tag (fleet ``limits``) may still start this dispatch.
        self._cap_room: dict[str, int] = {}
        # Machines out of dispatch (drained, quarantined) this dispatch.
        self._unusable: set[str] = set()
        self._memory: dict[str, BatchMemory] = {}
        self._batch_feed = batches.subscribe()
        self._run_feed = runs.subscribe()
        self._launched: dict[str, datetime] = {}
        self._dir_hashes: dict[str, str] = {}
        self._dirs: dict[str, bool] = {}
        self._entrypoints: dict[tuple[str, str], bool] = {}
        self._matching: dict[str, list[Machine]] = {}
        self._published_demand: dict[str, dict[str, int]] = {}

    # -- catching up ---------------------------------------------------------

    def _load(self, batch_id: str) -> BatchMemory:
        batch = self.batches.get(batch_id)
        runs = self.runs.get_many(item.run_id for item in batch.items.values() if item.run_id)
        memory = BatchMemory(batch, runs, first=self._critical_paths(batch), learns=self._learns)
        self._memory[batch.id] = memory
        self._memory[batch_id] = memory
        return memory

    def load(self, batch_id: str, now: datetime) -> None:
        """Read and classify the batch whole, once (a worker does this before
        its first tick: O(batch); every tick after costs what changed)."""
        memory = self._catch_up(batch_id)
        self._reclaim_orphans(memory, now)
        memory.settle(now)

    def _reclaim_orphans(self, memory: BatchMemory, now: datetime) -> None:
        """Runs no item points at that were never started: prepared by a
        worker killed between its two writes of a step (the runs, then the
        decisions naming them). They hold their machines' slots, and nobody
        else would start them. A run for its item's current attempt is
        dispatched and started now, as its worker meant to; any other is
        ended. Safe at load: this worker holds the lease, so no other step
        is halfway. O(runs of the batch)."""
        unowned = self.runs.ids_of_batches([memory.id]) - memory.owner.keys()
        orphans = [
            run for run in self.runs.get_many(unowned).values() if run.status is RunStatus.PENDING
        ]
        reclaimed: dict[str, Item] = {}
        for run in sorted(orphans, key=lambda run: run.id):
            item = memory.items.get(run.item)
            if (
                item is not None
                and item.state is ItemState.QUEUED
                and item.attempt == run.attempt
                and run.item not in reclaimed
            ):
                reclaimed[run.item] = item.model_copy(
                    update={
                        "state": ItemState.DISPATCHED,
                        "run_id": run.id,
                        "machine": run.machine,
                        "updated_at": now,
                    }
                )
            else:
                self.runs.finish(
                    run.id,
                    RunStatus.INTERRUPTED,
                    now=now,
                    message="prepared by a worker that stopped before dispatching it",
                )
        if not reclaimed:
            return
        self.batches.apply_items(memory.id, reclaimed, lease_token=self.lease_token)
        self._catch_up(memory.id)  # folds the decisions just recorded
        chosen = {item.run_id for item in reclaimed.values()}
        self._start([run for run in orphans if run.id in chosen], now)

    def _critical_paths(self, batch: Batch) -> dict[str, float]:
        """Each item's longest chain of expected work, from the durations
        its earlier runs took (same name, same content; the median of the
        known ones for the others). O(items + needs + entries kept in the
        durations file), once per load. History is an aid: a file that
        cannot be read is gone without."""
        if not self.settings.critical_path_first:
            return {}
        known: dict[str, float] = {}
        if self.durations is not None:
            with contextlib.suppress(StateError):
                kept = self.durations.expected()
                for entry in batch.entries if kept else ():
                    key = duration_key(entry.name, self._test_dir_hash(entry))
                    if key in kept:
                        known[entry.name] = kept[key]
        needs = {entry.name: entry.needs for entry in batch.entries if entry.needs}
        if not known and not needs:
            return {}  # every item alike: plan order, and no memory per item
        names = [entry.name for entry in batch.entries]
        expected, _ = expected_durations(names, known)
        return critical_path(names, needs, expected)

    def _learns(self, run: Run) -> bool:
        """A simulated run's duration was drawn, not measured: not history."""
        machine = self.fleet.get(run.machine)
        return machine is None or machine.transport != "sim"

    def keep_durations(self, batch_id: str, now: datetime) -> str | None:
        """Add the durations learned since the last call to the durations
        file, in one write; why not, as a sentence for the log (they are
        kept for the next call)."""
        memory = self._memory.get(batch_id)
        if memory is None or not memory.learned or self.durations is None:
            return None
        try:
            self.durations.record(memory.learned, now)
        except StateError as error:
            return error.message
        memory.learned = {}
        return None

    def _catch_up(self, batch_id: str) -> BatchMemory:
        batch_records = self._batch_feed.drain()
        run_records = self._run_feed.drain()
        memory = self._memory.get(batch_id)
        if memory is None or batch_records is None:
            return self._load(batch_id)
        for record in batch_records:
            if record.get("batch") != memory.id:
                continue
            if record["op"] == "items":
                for name in record["items"]:
                    if name in memory.items:
                        self._refresh_item(memory, name)
            elif record["op"] in ("cancel", "uncancel"):
                memory.cancelled = record["op"] == "cancel"
                memory.dirty.update(memory.items)
        if run_records is None:
            wanted = [
                run_id
                for run_id, name in memory.owner.items()
                if name not in memory.final or name in memory.dependents
            ]
            memory.runs = self.runs.get_many(wanted)
            memory.dirty.update(memory.owner[run_id] for run_id in wanted)
            return memory
        changed: set[str] = set()
        for record in run_records:
            if record["op"] == "update":
                changed.add(record["run"])
            elif record["op"] == "create":
                changed.update(raw["id"] for raw in record["runs"] if raw["id"] in memory.owner)
        for run_id, run in self.runs.get_many(changed & memory.owner.keys()).items():
            before = memory.runs.get(run_id)
            if run.status.terminal and (before is None or not before.status.terminal):
                self._ended.append(run)
            memory.runs[run_id] = run
            memory.dirty.add(memory.owner[run_id])
        return memory

    def _refresh_item(self, memory: BatchMemory, name: str) -> None:
        item = self.batches.item(memory.id, name)
        if item == memory.items[name]:
            return
        memory.items[name] = item
        if item.run_id and item.run_id not in memory.owner:
            memory.owner[item.run_id] = name
            memory.runs.update(self.runs.get_many([item.run_id]))
        memory.dirty.add(name)

    # -- the step ------------------------------------------------------------

    def step(self, batch_id: str, now: datetime) -> StepReport:
        report = StepReport(done=False)
        memory = self._catch_up(batch_id)
        # Classified before the check, so that the runs in flight the step
        # looks at include those of items read since the last step (a
        # worker's first step: the runs the command that made it started).
        memory.settle(now)
        if self._check(memory, now, report):
            memory = self._catch_up(batch_id)  # fold what the transports recorded
        self._count_ends(now)
        relaunch = self._reap(memory, now, report)
        proposals: dict[str, Item] = {}
        self._decide(memory, now, proposals, report)
        started = self._dispatch(memory, now, proposals, report)
        self._start([*relaunch, *started], now)
        report.dispatched.extend(run.item for run in started)
        report.done = memory.done
        return report

    def _count_ends(self, now: datetime) -> None:
        """Runs of this batch seen ending since the last step count for or
        against their machines' health. O(runs that ended)."""
        ended, self._ended = self._ended, []
        if self.health is not None and ended:
            self.health.observe(ended, now)

    def tend_health(self, now: datetime) -> None:
        """Run the health checks of quarantined machines that are due (a
        worker does this between steps; it never waits for a check)."""
        if self.health is not None:
            self.health.tend(now)

    def close(self) -> None:
        if self.health is not None:
            self.health.close()

    def health_events(self) -> list[str]:
        """What happened to machines' health since the last call (for the log)."""
        if self.health is None:
            return []
        events, self.health.events = self.health.events, []
        return events

    def use_fleet(self, fleet: Fleet) -> None:
        """Dispatch to this fleet from the next step on (a pool's machines
        came or went). O(1); what is derived from the fleet is made again
        as it is asked for."""
        self.fleet = fleet
        self._matching.clear()
        if self.health is not None:
            self.health.fleet = fleet

    def wakeup_fds(self) -> list[int]:
        """Readable as soon as a run this process supervises ends."""
        return [fd for transport in self._distinct_transports() for fd in transport.wakeup_fds()]

    def due_in(self, now: datetime) -> float | None:
        """Seconds until a run supervised here may end, if any transport knows."""
        hints = [
            hint
            for transport in self._distinct_transports()
            if (hint := transport.due_in(now)) is not None
        ]
        return min(hints) if hints else None

    def _distinct_transports(self) -> list[Transport]:
        unique: dict[int, Transport] = {}
        for transport in self.transports.values():
            unique.setdefault(id(transport), transport)
        return list(unique.values())

    def _transport(self, machine_name: str) -> Transport | None:
        machine = self.fleet.get(machine_name)
        return self.transports.get(machine.transport) if machine else None

    def _start(self, runs: list[Run], now: datetime) -> None:
        """Start runs, several per transport call (one claim write for many)."""
        by_transport: dict[int, tuple[Transport, list[Run]]] = {}
        for run in runs:
            transport = self._transport(run.machine)
            if transport is not None:
                self._launched[run.id] = now
                by_transport.setdefault(id(transport), (transport, []))[1].append(run)
        for transport, group in by_transport.values():
            transport.start(group)

    def _check(self, memory: BatchMemory, now: datetime, report: StepReport) -> bool:
        """Have each transport look at its runs in flight and record what
        changed. O(runs in flight). True if there was anything to look at."""
        by_transport: dict[int, tuple[Transport, list[Run]]] = {}
        for name in sorted(memory.active, key=memory.order.__getitem__):
            run = memory.run_of(name)
            if run is None or run.status.terminal:
                continue
            transport = self._transport(run.machine)
            if transport is None:
                ended = self.runs.finish(
                    run.id,
                    RunStatus.INTERRUPTED,
                    now=now,
                    message=f"machine {run.machine!r} left the fleet",
                )
                self._saw_run(memory, ended)
                report.interrupted.append(name)
                continue
            by_transport.setdefault(id(transport), (transport, []))[1].append(run)
        for transport, runs in by_transport.values():
            lost = set(transport.check(runs, now))
            report.interrupted.extend(run.item for run in runs if run.id in lost)
        return bool(by_transport)

    def _reap(self, memory: BatchMemory, now: datetime, report: StepReport) -> list[Run]:
        """Stop the runs of a cancelled batch; return the runs nobody claimed
        within the grace, to start again. O(runs in flight)."""
        grace = timedelta(seconds=self.settings.launch_grace_s)
        relaunch: list[Run] = []
        for name in sorted(memory.active, key=memory.order.__getitem__):
            run = memory.run_of(name)
            transport = self._transport(run.machine) if run is not None else None
            if run is None or transport is None or run.status.terminal:
                continue
            if memory.cancelled:
                self._saw_run(memory, transport.terminate(run))
            elif not run.claimed:
                launched = max(run.created_at, self._launched.get(run.id, run.created_at))
                if now - launched > grace:
                    relaunch.append(run)
        self._forget_launches(memory)
        return relaunch

    def _forget_launches(self, memory: BatchMemory) -> None:
        """Only unclaimed runs need their launch time; once the record of
        launches is much larger than the runs in flight, keep just theirs.
        Amortised O(1) per launch."""
        if len(self._launched) <= 2 * len(memory.active) + 1000:
            return
        in_flight = {run.id for name in memory.active if (run := memory.run_of(name)) is not None}
        self._launched = {
            run_id: moment for run_id, moment in self._launched.items() if run_id in in_flight
        }

    def _saw_run(self, memory: BatchMemory, run: Run) -> None:
        memory.runs[run.id] = run
        memory.dirty.add(memory.owner.get(run.id, run.item))

    def _decide(
        self,
        memory: BatchMemory,
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
    ) -> None:
        """Retries, cascades, cancellations and queue timeouts, applied to
        memory as they are decided so they chain within one step."""
        while True:
            memory.settle(now)
            decided = False
            for name in sorted(memory.to_retry, key=memory.order.__getitem__):
                item = memory.items[name]
                delay = retry_delay(item.attempt, self.settings.backoff, self.uniform)
                self._propose(
                    memory, item.next_attempt(now, now + timedelta(seconds=delay)), proposals
                )
                report.requeued.append(name)
                decided = True
            for name, (code, blame) in sorted(
                memory.to_skip.items(), key=lambda pair: memory.order[pair[0]]
            ):
                self._propose(memory, memory.items[name].skipped(code, now, blame), proposals)
                report.skipped.append(name)
                decided = True
            while memory.expiry and memory.expiry[0][0] <= now:
                _, _, name, attempt = heapq.heappop(memory.expiry)
                if memory.still_queued(name, attempt):
                    item = memory.items[name]
                    self._propose(memory, item.skipped(SkipCode.QUEUE_TIMEOUT, now), proposals)
                    report.skipped.append(name)
                    decided = True
            if not decided:
                return

    def _propose(self, memory: BatchMemory, item: Item, proposals: dict[str, Item]) -> None:
        memory.items[item.name] = item
        memory.to_retry.discard(item.name)
        memory.to_skip.pop(item.name, None)
        memory.dirty.add(item.name)
        proposals[item.name] = item

    # -- dispatching ---------------------------------------------------------

    def _matching_machines(self, selector: str) -> list[Machine]:
        if selector not in self._matching:
            self._matching[selector] = self.fleet.matching(selector)
        return self._matching[selector]

    def _has_entrypoint(self, abs_dir: str, entrypoint: str) -> bool:
        key = (abs_dir, entrypoint)
        if key not in self._entrypoints:
            self._entrypoints[key] = (Path(abs_dir) / entrypoint).is_file()
        return self._entrypoints[key]

    def _unrunnable(self, entry: Entry) -> SkipCode | None:
        """Why the entry can never run here; the file system is asked once
        per directory and entrypoint, not once per tick."""

        def dir_exists(abs_dir: str) -> bool:
            if abs_dir not in self._dirs:
                self._dirs[abs_dir] = Path(abs_dir).is_dir()
            return self._dirs[abs_dir]

        # Before a pool has a machine, what its machines will be.
        matching = self._matching_machines(entry.selector) or self.fleet.pool_templates(
            entry.selector
        )
        if entry.snapshot is not None and self.snapshot_has_file is not None:
            # The batch runs the snapshot: it exists, whatever became of the
            # directory; only its entrypoint is in question.
            return why_unrunnable(
                entry.snapshot,
                matching,
                dir_exists=lambda _: True,
                has_entrypoint=self._snapshot_has_entrypoint,
            )
        return why_unrunnable(
            entry.abs_dir,
            matching,
            dir_exists=dir_exists,
            has_entrypoint=self._has_entrypoint,
        )

    def _entry_has_entrypoint(self, entry: Entry, entrypoint: str) -> bool:
        if entry.snapshot is not None and self.snapshot_has_file is not None:
            return self._snapshot_has_entrypoint(entry.snapshot, entrypoint)
        return self._has_entrypoint(entry.abs_dir, entrypoint)

    def _snapshot_has_entrypoint(self, snapshot: str, entrypoint: str) -> bool:
        key = (snapshot, entrypoint)
        if key not in self._entrypoints:
            assert self.snapshot_has_file is not None
            self._entrypoints[key] = self.snapshot_has_file(snapshot, entrypoint)
        return self._entrypoints[key]

    def _test_dir_hash(self, entry: Entry) -> str:
        """The snapshot's digest, or for a batch made without snapshots the
        directory's hash, taken once per directory."""
        if entry.snapshot is not None:
            return entry.snapshot
        if entry.abs_dir not in self._dir_hashes:
            self._dir_hashes[entry.abs_dir] = self.hash_dir(Path(entry.abs_dir))
        return self._dir_hashes[entry.abs_dir]

    def _drained_now(self) -> Mapping[str, Drain]:
        """The drained machines; a damaged or newer drain file must not stop
        every batch's dispatch, so the last answer read is kept (``machines
        drain`` and ``resume`` refuse such a file and say why)."""
        with contextlib.suppress(StateError):
            self._last_drained = self.drained()
        return self._last_drained

    def _precedence(self, memory: BatchMemory, free: dict[str, int]) -> int | None:
        """Fair sharing between live batches (``ordering.FairTurns``): the
        free slots are handed out one at a time, each to the batch that then
        holds the fewest per unit of priority (ties: fewer runs so far, then
        the older). Each turn takes a real slot, on a machine the batch's
        waiting items match, in a scratch copy of ``free`` (fleet limits
        included), so that a turn never counts a slot another turn took.
        Then the slots that fell to other batches' published demand are
        taken out of ``free`` (held back for them), and the number that
        fell to this batch is returned: at most that many of its items
        start now. None when no other batch wants a slot (or other batches
        are not considered). O(batches + free slots x log batches +
        machines matching the selectors in demand)."""
        if self.lease_judge is None:
            return None
        others = [
            other
            for other in self.batches.demands()
            if other.batch_id == memory.id
            or (
                not other.cancelled
                and other.demand
                and self.lease_judge.live(other.batch_id, other.lease)
            )
        ]
        if all(other.batch_id == memory.id for other in others):
            return None
        own = {selector: len(heap) for selector, heap in memory.ready.items() if heap}
        own_wants = sum(own.values())
        if memory.max_parallel is not None:
            own_wants = min(own_wants, max(0, memory.max_parallel - len(memory.active)))
        held = self.runs.held_by_batch()
        so_far = self.runs.run_counts(other.batch_id for other in others)
        contenders: list[Contender] = []
        claims: dict[str, _Claims] = {}
        for age, other in enumerate(others):
            demand = own if other.batch_id == memory.id else other.demand
            wants = own_wants if other.batch_id == memory.id else sum(demand.values())
            weight = memory.priority if other.batch_id == memory.id else other.priority
            contenders.append(
                Contender(
                    other.batch_id,
                    held.get(other.batch_id, 0),
                    weight,
                    age,
                    wants,
                    so_far.get(other.batch_id, 0),
                )
            )
            claims[other.batch_id] = _Claims(
                [
                    (
                        count,
                        [
                            m.name
                            for m in reversed(self._matching_machines(selector))
                            if m.dispatchable
                        ],
                    )
                    for selector, count in demand.items()
                ]
            )
        room_before = dict(self._cap_room)
        scratch = dict(free)
        budget = 0
        held_back: list[str] = []
        turns = FairTurns(contenders)
        while (turn := turns.next()) is not None:
            machine = claims[turn.batch_id].take(scratch)
            if machine is None:
                turns.passed()
                continue
            self._take_slot(machine, scratch)
            turns.took()
            if turn.batch_id == memory.id:
                budget += 1
            else:
                held_back.append(machine)
        self._cap_room = room_before
        for machine in held_back:
            self._take_slot(machine, free)
        return budget

    def _dispatch(
        self,
        memory: BatchMemory,
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
    ) -> list[Run]:
        """Prepare runs for ready items on free slots and record every
        decision of the step in one fenced write. O(selectors + free slots
        + decisions)."""
        with self.batches.fenced(memory.id, self.lease_token) as record:
            requests: list[PrepareRequest] = []
            demand: dict[str, int] = {}
            if not memory.cancelled:
                free = self._free_slots(())
                # This batch's fair share of the free slots; the rest are
                # held back for other batches' waiting items.
                share = self._precedence(memory, free)
                # The batch's own cap (``run --max-parallel``): its runs in
                # flight are the items it has active, O(1) to count.
                room = (
                    None
                    if memory.max_parallel is None
                    else memory.max_parallel - len(memory.active)
                )
                for selector, heap in memory.ready.items():
                    limit = room if share is None else share if room is None else min(room, share)
                    made = self._requests_for(
                        memory, selector, heap, free, now, proposals, report, limit
                    )
                    requests.extend(made)
                    if room is not None:
                        room -= len(made)
                    if share is not None:
                        share -= len(made)
                    # Items left that found no free machine (an upper bound);
                    # those the batch's own cap holds back claim no slot
                    # other batches could use.
                    if heap and (room is None or room > 0):
                        demand[selector] = len(heap)
            results = (
                self.runs.prepare_many(
                    requests,
                    slots={m.name: m.slots for m in self.fleet.machines},
                    now=now,
                )
                if requests
                else []
            )
            to_start: list[Run] = []
            for request, result in zip(requests, results, strict=True):
                item = memory.items[request.item]
                if result.answer is Answer.BUSY or result.run is None:
                    memory.in_ready.discard((item.name, item.attempt))
                    memory.dirty.add(item.name)
                    demand[self._selector(memory, item.name)] = (
                        demand.get(self._selector(memory, item.name), 0) + 1
                    )
                    continue
                run = result.run
                dispatched = item.model_copy(
                    update={
                        "state": ItemState.DISPATCHED,
                        "run_id": run.id,
                        "machine": run.machine,
                        "updated_at": now,
                    }
                )
                memory.owner[run.id] = item.name
                memory.runs[run.id] = run
                self._propose(memory, dispatched, proposals)
                if result.answer is Answer.CREATED or not run.claimed:
                    to_start.append(run)
            published = self._published_demand.get(memory.id)
            record(proposals, demand if demand != published else None)
            self._published_demand[memory.id] = demand
        memory.settle(now)
        return to_start

    @staticmethod
    def _selector(memory: BatchMemory, name: str) -> str:
        return memory.entries[name].selector

    def _out_of_dispatch(self) -> set[str]:
        """Machines that take no new run: drained, quarantined, being probed
        by this worker after a run could not reach them, or pool machines no
        longer ``ready`` in ``pools.json``. O(those + pool machines)."""
        out = set(self._drained_now())
        if self.health is not None:
            out.update(self.health.quarantined())
            out.update(self.health.probing())
        pooled = self.fleet.pool_machine_names
        if pooled:
            states = self._pool_states_now()
            out.update(name for name in pooled if states.get(name) != "ready")
        return out

    def _pool_states_now(self) -> Mapping[str, str]:
        """Each pool machine's state, by name: one ``stat`` while
        ``pools.json`` is unchanged. A damaged or newer file keeps the last
        answer read (with none, every pool machine is left out)."""
        if self.pools is None:
            return {}
        with contextlib.suppress(StateError):
            pools = self.pools.pools()
            if pools is not self._pools_read:  # the store re-read the file
                self._pools_read = pools
                self._last_pool_states = {
                    name: machine.state
                    for state in pools.values()
                    for name, machine in state.machines.items()
                }
        return self._last_pool_states

    def _free_slots(self, claims: Iterable[SlotClaim]) -> dict[str, int]:
        """Free slots per machine: none on a drained or quarantined machine,
        none on the machines of a capped tag whose runs reached its limit.
        Read under the batches lock, which every dispatch of every batch
        holds, so the runs held are the runs there are. O(machines + claims)."""
        held = self.runs.held()
        out = self._out_of_dispatch()
        self._unusable = out
        free = {
            m.name: 0 if m.name in out else m.slots - held.get(m.name, 0)
            for m in self.fleet.machines
        }
        self._cap_room = {
            tag: self.fleet.limits[tag] - sum(held.get(name, 0) for name in names)
            for tag, names in self.fleet.limited.items()
        }
        for tag, room in self._cap_room.items():
            if room <= 0:
                self._close_tag(tag, free)
        for claim in claims:
            for name in claim.candidates:
                if free.get(name, 0) > 0:
                    self._take_slot(name, free)
                    break
        return free

    def _take_slot(self, name: str, free: dict[str, int]) -> None:
        """One slot of ``name`` taken: from it, and from each capped tag it
        has (a cap reached closes every machine with that tag)."""
        free[name] -= 1
        if not self._cap_room:
            return
        machine = self.fleet.get(name)
        if machine is None:
            return
        for tag in self.fleet.caps_of(machine):
            self._cap_room[tag] -= 1
            if self._cap_room[tag] <= 0:
                self._close_tag(tag, free)

    def _close_tag(self, tag: str, free: dict[str, int]) -> None:
        # At most once per capped tag and dispatch: O(machines with the tag).
        for name in self.fleet.limited[tag]:
            free[name] = 0

    def _requests_for(
        self,
        memory: BatchMemory,
        selector: str,
        heap: list[ReadyEntry],
        free: dict[str, int],
        now: datetime,
        proposals: dict[str, Item],
        report: StepReport,
        room: int | None = None,
    ) -> list[PrepareRequest]:
        """Pop ready items of one selector while a matching machine has a
        free slot, at most ``room`` of them (the batch's own cap); each
        request reserves its slot in ``free``."""
        requests: list[PrepareRequest] = []
        # Retries waiting a little for a machine they have not failed on;
        # put back once this selector's turn is over.
        deferred: list[ReadyEntry] = []
        # Reversed, so machines that fill up are popped off the end.
        pool = [
            m
            for m in reversed(self._matching_machines(selector))
            if m.dispatchable and free.get(m.name, 0) > 0
        ]
        while heap and (room is None or len(requests) < room):
            _, _, name, attempt = heap[0]
            if not memory.still_queued(name, attempt):
                heapq.heappop(heap)
                memory.in_ready.discard((name, attempt))
                continue
            entry = memory.entries[name]
            skip = self._unrunnable(entry)
            if skip is not None:
                heapq.heappop(heap)
                memory.in_ready.discard((name, attempt))
                self._propose(memory, memory.items[name].skipped(skip, now), proposals)
                report.skipped.append(name)
                continue
            machine = self._free_machine(memory, entry, memory.items[name], free, pool)
            if machine is None:
                break  # every machine this selector may use is taken
            if self._waits_for_fresh(memory, entry, memory.items[name], machine, now):
                deferred.append(heapq.heappop(heap))
                continue
            self._take_slot(machine, free)
            heapq.heappop(heap)
            requests.append(
                PrepareRequest(
                    batch_id=memory.id,
                    item=name,
                    attempt=attempt,
                    candidates=(machine,),
                    test_dir=entry.abs_dir,
                    test_dir_hash=self._test_dir_hash(entry),
                )
            )
        for waiting in deferred:
            heapq.heappush(heap, waiting)
        return requests

    def _free_machine(
        self,
        memory: BatchMemory,
        entry: Entry,
        item: Item,
        free: Mapping[str, int],
        pool: list[Machine],
    ) -> str | None:
        """The first machine in fleet order that may take the item and has a
        free slot; a retry prefers one the item has not failed on, and a
        machine without the entrypoint for its OS is passed over. ``pool``
        is this selector's machines with free slots this tick, trimmed as
        they fill, so a tick costs O(machines + dispatches), not their product."""
        while pool and free.get(pool[-1].name, 0) <= 0:
            pool.pop()
        if not item.history:
            for machine in reversed(pool):
                if free.get(machine.name, 0) > 0 and self._entry_has_entrypoint(
                    entry, machine.entrypoint
                ):
                    return machine.name
            return None
        names = [
            m.name
            for m in reversed(pool)
            if free.get(m.name, 0) > 0 and self._entry_has_entrypoint(entry, m.entrypoint)
        ]
        names = prefer_fresh_machines(names, self._failed_on(memory, item))
        return names[0] if names else None

    def _waits_for_fresh(
        self, memory: BatchMemory, entry: Entry, item: Item, machine: str, now: datetime
    ) -> bool:
        """Whether a retry offered only a machine it failed on waits instead:
        while another machine that may run it exists (busy now, not drained
        or quarantined), for at most the fleet's ``health.retry_elsewhere``
        from when it became ready. O(its earlier attempts + the selector's
        machines), only for retries offered such a machine."""
        if not item.history:
            return False
        failed_on = self._failed_on(memory, item)
        if machine not in failed_on:
            return False
        wait = timedelta(seconds=self.fleet.health.retry_elsewhere)
        if now >= memory.ready_since(entry.name, item) + wait:
            return False
        return any(
            m.dispatchable
            and m.name not in failed_on
            and m.name not in self._unusable
            and self._entry_has_entrypoint(entry, m.entrypoint)
            for m in self._matching_machines(entry.selector)
        )

    def _failed_on(self, memory: BatchMemory, item: Item) -> set[str]:
        """Machines where earlier attempts of this item did not pass."""
        earlier = self.runs.get_many(item.history).values()
        return {run.machine for run in earlier if run.status is not RunStatus.SUCCEEDED}
