"""What each command does, apart from parsing and printing (SPEC §3, §8)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchctl.engine.dispatch import Dispatcher
from batchctl.engine.scheduler import why_unrunnable
from batchctl.model.clock import Clock, utc_iso
from batchctl.model.errors import InvalidInput, InvalidPlan, NotFound, StateError
from batchctl.model.fleet import Machine
from batchctl.model.models import Batch, Entry, Item, ItemState, ProcessIdentity, Run, SkipCode
from batchctl.model.ordering import DEFAULT_PRIORITY, duration_key, time_left
from batchctl.model.plan import Plan, dir_label, missing_dir_problems
from batchctl.model.policy import item_is_final, item_passed
from batchctl.model.rules import DEFAULT_QUEUE_TIMEOUT_S, TERMINAL_STATUSES
from batchctl.model.viewdoc import BatchReading, Document, remaining_items, run_document
from batchctl.model.views import (
    BatchSummary,
    BatchView,
    DrainView,
    FleetContext,
    ItemDetail,
    MachineView,
    PoolView,
    View,
    attempt_document,
    batch_summary,
    machine_views,
)
from batchctl.state.batches import BatchStore, items_record
from batchctl.state.drains import DrainStore
from batchctl.state.journal import Record
from batchctl.state.memory import without_gc
from batchctl.state.pools import PoolState
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import Scan, SnapshotRefused, SnapshotStore
from batchctl.transports.slurm import SlurmUnavailable, cluster_nodes

# A drain's reason is a line for a table, not a document.
MAX_DRAIN_REASON = 500


class ChangedSince(View):
    """The newest batch of the same plan and staging, and the entries whose
    directories changed since it (a new batch was made for them)."""

    batch: str
    entries: list[str]


if TYPE_CHECKING:
    from batchctl.model.report import Report


class SubmitResult(View):
    resumed: bool
    batch: BatchView
    changed_since: ChangedSince | None = None


@dataclass(frozen=True)
class Submitted:
    batch_id: str
    resumed: bool
    changed_since: ChangedSince | None
    # The batch's own (fixed at creation, whatever a resume asked for).
    priority: int = DEFAULT_PRIORITY
    max_parallel: int | None = None


def content_hash(entries: Iterable[Entry]) -> str:
    """The batch key's content part: every entry's snapshot digest."""
    outer = hashlib.sha256()
    for entry in sorted(entries, key=lambda entry: entry.name):
        outer.update(f"{entry.name}\0{entry.snapshot}\n".encode())
    return outer.hexdigest()


class DryRunItem(View):
    name: str
    dir: str
    selector: str
    needs: list[str]
    timeout_s: int
    retries: int
    retry_on: list[str]
    # The fleet's machines it could run on, and why it never could (a skip
    # code: no_matching_machine, entrypoint_missing), if so.
    machines: list[str]
    would_skip: str | None


class DryRunResult(View):
    plan_hash: str
    staging: str
    source: str
    would_resume: str | None
    items: list[DryRunItem]


def _changed_since(previous: Batch | None, batch: Batch, resumed: bool) -> ChangedSince | None:
    """Which entries made a new batch rather than resuming ``previous``."""
    if resumed or previous is None or previous.id == batch.id:
        return None
    if any(entry.snapshot is None for entry in previous.entries):
        return None  # made before snapshots: nothing to compare with
    before = {entry.name: entry.snapshot for entry in previous.entries}
    changed = [entry.name for entry in batch.entries if before.get(entry.name) != entry.snapshot]
    return ChangedSince(batch=previous.id, entries=changed) if changed else None


def new_batch_id(clock: Clock) -> str:
    """Sortable by creation time, unique by its random tail."""
    return f"{clock.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class RetryResult(View):
    requeued: list[str]
    batch: BatchView


class LogTarget(View):
    batch_id: str
    item: str
    run_id: str
    attempt: int
    log_path: str
    finished: bool


class DrainResult(View):
    """What ``machines drain`` and ``machines resume`` did to a machine."""

    machine: str
    drained: bool
    # False when the machine already was as asked (drain again: its reason
    # is replaced all the same).
    changed: bool
    drain: DrainView | None
    # Runs the machine still holds: a drained machine finishes them.
    running: int
    # ``resume`` also ends a quarantine, without waiting for a health check.
    unquarantined: bool = False


class KeptBatch(View):
    id: str
    reason: str


class PruneResult(View):
    """With ``dry_run``, what would be removed; nothing was."""

    dry_run: bool
    created_before: datetime
    removed: list[str]
    kept: list[KeptBatch]
    runs_removed: int
    # Run directories and worker logs that could not be deleted (their
    # records are gone all the same).
    left_behind: list[str]


NOT_FINISHED = "not finished"
# A waiting command sleeps this many times what a look at the batch cost.
WAIT_SPACING = 4.0


def prune_cutoff(now: datetime, older_than: timedelta) -> datetime:
    try:
        return now - older_than
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)  # nothing is that old


def _delete(path: Path) -> str | None:
    """Delete a file or a directory tree; a missing one is fine. The path,
    with the reason, if it could not be deleted."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


@dataclass
class BatchService:
    batches: BatchStore
    runs: RunStore
    clock: Clock
    identity: str
    dispatcher: Dispatcher
    snapshots: SnapshotStore
    sleep: Callable[[float], None]
    # Sleep, or less: until the given process ends (see processes.sleep_unless_it_ends).
    sleep_unless_it_ends: Callable[[ProcessIdentity | None, float], None]

    def _runs_of(self, batches: Iterable[Batch]) -> dict[str, Run]:
        return self.runs.get_many(
            item.run_id for batch in batches for item in batch.items.values() if item.run_id
        )

    def _fleet_context(self) -> FleetContext:
        return FleetContext(
            fleet=self.dispatcher.fleet,
            held=self.runs.held(),
            now=self.clock.now(),
            drained=self.dispatcher.drains.drained() if self.dispatcher.drains else {},
            quarantined=self.dispatcher.health.quarantined() if self.dispatcher.health else {},
        )

    def reading(self, batch_id: str, *, explain: bool = True) -> BatchReading:
        """The stored batch joined with the stored runs, as they are: O(1)
        until asked for something. ``explain``: say why queued items wait
        (the fleet is loaded only if one does). It looks at the stores' live
        records: use it before the next read of either store. The batch is
        read first: every run a decision names was written before it."""
        return BatchReading(
            self.batches.raw(batch_id),
            self.runs.stored(),
            self.runs.runs_prefix,
            _LazyReasons(self._fleet_context) if explain else None,
        )

    def view_document(self, batch_id: str) -> Document:
        """The view as JSON-ready data: O(items + needs), no validation."""
        with without_gc():
            return self.reading(batch_id).document()

    def view(self, batch_id: str) -> BatchView:
        with without_gc():
            return BatchView.model_validate(self.reading(batch_id).document())

    def snapshot(self, plan: Plan, *, store: bool) -> tuple[Entry, ...]:
        """The plan's entries with the digest of their directories' snapshots.
        Every directory is scanned before anything is stored, so a plan
        refused for one directory leaves nothing behind; every problem of
        every directory is reported at once. O(bytes of the directories)."""
        problems = missing_dir_problems(plan)
        if problems:
            raise InvalidPlan(plan.path, problems)
        scans: dict[str, Scan] = {}
        reported: set[int] = set()
        for position, entry in enumerate(plan.entries):
            if entry.abs_dir in scans:
                continue
            try:
                scans[entry.abs_dir] = self.snapshots.scan(Path(entry.abs_dir))
            except SnapshotRefused as refused:
                origin, where = dir_label(plan, position)
                if origin not in reported:
                    reported.add(origin)
                    problems.extend(
                        f"{plan.path}: {where}: {entry.dir}/{problem}"
                        for problem in refused.problems
                    )
        if problems:
            raise InvalidPlan(plan.path, problems)
        if store:
            for scanned in scans.values():
                self._store(scanned)
        return tuple(
            entry.model_copy(update={"snapshot": scans[entry.abs_dir].digest})
            for entry in plan.entries
        )

    def _store(self, scanned: Scan) -> None:
        try:
            self.snapshots.store(scanned)
        except SnapshotRefused as refused:
            raise InvalidInput(
                f"{scanned.directory}: {'; '.join(refused.problems)}",
                details={"dir": str(scanned.directory)},
            ) from None
        except OSError as exc:
            raise StateError(
                f"cannot store the snapshot of {scanned.directory}: {exc.strerror or exc}",
                details={"dir": str(scanned.directory)},
            ) from None

    def _snapshots_still_stored(self, plan: Plan, entries: tuple[Entry, ...]) -> None:
        """Under the batches lock, before a new batch names its snapshots:
        store again any that a prune collected since they were taken (prune
        collects under the same lock). O(files of the distinct snapshots)."""
        checked: set[str] = set()
        for entry in entries:
            if entry.snapshot is None or entry.snapshot in checked:
                continue
            checked.add(entry.snapshot)
            if not self.snapshots.present(entry.snapshot):
                rescanned = self.snapshots.scan(Path(entry.abs_dir))
                if rescanned.digest != entry.snapshot:
                    raise InvalidInput(
                        f"{plan.path}: {entry.dir} changed while it was being snapshotted; "
                        "run again",
                        details={"dir": entry.dir},
                    )
                self._store(rescanned)

    def submit(
        self,
        plan: Plan,
        *,
        staging: str,
        force_new: bool,
        queue_timeout_s: int = DEFAULT_QUEUE_TIMEOUT_S,
        max_parallel: int | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> Submitted:
        """The batch created or resumed for the plan, the staging and the
        content of every entry's directory, snapshotted now: the batch runs
        the snapshot wherever the workspace goes."""
        # Resolve the fleet first: a bad fleet file must fail before anything is written.
        _ = self.dispatcher.fleet
        entries = self.snapshot(plan, store=True)
        content = content_hash(entries)

        def new_batch() -> Batch:
            self._snapshots_still_stored(plan, entries)
            now = self.clock.now()
            return Batch(
                id=new_batch_id(self.clock),
                plan_hash=plan.plan_hash,
                staging=staging,
                created_by=self.identity,
                created_at=now,
                expected_count=len(entries),
                source=plan.source,
                entries=entries,
                items={entry.name: Item(name=entry.name, updated_at=now) for entry in entries},
                queue_timeout_s=queue_timeout_s,
                max_parallel=max_parallel,
                priority=priority,
                content_hash=content,
            )

        previous = self.batches.find_newest(plan.plan_hash, staging)
        batch, resumed = self.batches.create_or_get(
            plan.plan_hash,
            staging,
            content_hash=content,
            force_new=force_new,
            new_batch=new_batch,
        )
        if not batch.cancelled:
            self.dispatcher.foreground_pass(batch.id)
        return Submitted(
            batch.id,
            resumed,
            _changed_since(previous, batch, resumed),
            batch.priority,
            batch.max_parallel,
        )

    def dry_run(self, plan: Plan, *, staging: str) -> DryRunResult:
        entries = self.snapshot(plan, store=False)
        existing = self.batches.find_newest(plan.plan_hash, staging, content_hash(entries))
        fleet = self.dispatcher.fleet
        items = []
        for entry in plan.entries:
            matching = fleet.matching(entry.selector)
            skip = why_unrunnable(entry.abs_dir, matching or fleet.pool_templates(entry.selector))
            items.append(
                DryRunItem(
                    name=entry.name,
                    dir=entry.dir,
                    selector=entry.selector,
                    needs=list(entry.needs),
                    timeout_s=entry.timeout_s,
                    retries=entry.retries,
                    retry_on=list(entry.retry_on),
                    machines=[machine.name for machine in matching],
                    would_skip=skip.value if skip is not None else None,
                )
            )
        return DryRunResult(
            plan_hash=plan.plan_hash,
            staging=staging,
            source=plan.source,
            would_resume=existing.id if existing else None,
            items=items,
        )

    def expected_durations(self, batch_id: str) -> dict[str, float]:
        """Seconds each item of the batch is expected to take: what its
        earlier runs took (same name, same content), from the durations
        file; items without history are left out. O(entries + entries of
        the durations file); empty when the file cannot be read (history is
        an aid, never a reason to fail)."""
        store = self.dispatcher.durations
        if store is None:
            return {}
        keys = {
            duration_key(entry["name"], entry["snapshot"]): entry["name"]
            for entry in self.batches.raw(batch_id)["entries"]
            if entry.get("snapshot")
        }
        try:
            kept = store.expected(keys)
        except StateError:
            return {}
        return {keys[key]: seconds for key, seconds in kept.items()}

    def with_eta(self, document: Document) -> Document:
        """The view with the batch's estimated time left (``eta_s``) and end
        (``eta``) while it is not done and some item has history.
        O(items + needs)."""
        if document["done"]:
            return document
        left = time_left(
            remaining_items(document, self.clock.now()), self.expected_durations(document["id"])
        )
        if left is None:
            return document
        return {
            **document,
            "eta_s": round(left, 1),
            "eta": utc_iso(self.clock.now() + timedelta(seconds=left)),
        }

    def status(self, batch_id: str) -> Document:
        """The joined view; an unfinished batch whose worker died is taken over."""
        document = self.view_document(batch_id)
        if not document["done"]:
            self.dispatcher.ensure_worker(document["id"])
        return self.with_eta(document)

    def report(self, batch_id: str) -> Report:
        """The batch's report as stored now, every attempt merged. A read
        only: no worker is started or taken over (``status`` does that), and
        the fleet is not loaded (queued items say they wait, not on what)."""
        # Imported here: the XML parser it brings is for this command only.
        from batchctl.engine.report import gather_report

        return gather_report(self.reading(batch_id, explain=False))

    def watch_report(
        self, batch_id: str, *, on_report: Callable[[Report], None], interval_s: float
    ) -> Report:
        """The batch's report every ``interval_s`` seconds, each handed to
        ``on_report``, until the batch is done; the last one is returned
        (and handed over too). Like ``wait``, it takes over a dead worker
        (a batch nobody finishes would be watched forever) and wakes early
        when the worker exits, so the final report follows the batch's end."""
        while True:
            report = self.report(batch_id)
            # The full id from here on: a prefix the user typed may match a
            # second batch made while this one is watched.
            batch_id = report.batch_id
            on_report(report)
            if report.done:
                return report
            self.dispatcher.ensure_worker(report.batch_id)
            lease = self.batches.lease(report.batch_id)
            self.sleep_unless_it_ends(lease.holder if lease is not None else None, interval_s)

    def cancel(self, batch_id: str, *, settle_s: float) -> BatchView:
        """Stop dispatching, skip queued items, stop running runs (they end
        interrupted), and wait up to ``settle_s`` for them to be recorded."""
        before = self.view(batch_id)
        if before.done:
            return before

        def decide(batch: Batch) -> list[Record]:
            now = self.clock.now()
            skips = {
                name: item.skipped(SkipCode.CANCELLED, now)
                for name, item in batch.items.items()
                if item.state is ItemState.QUEUED
            }
            return [{"op": "cancel", "batch": batch.id}, items_record(batch.id, skips)]

        batch = self.batches.decide(before.id, decide)
        deadline = self.clock.monotonic() + settle_s
        for run in self._live_runs(batch):
            transport = self.dispatcher.transports.get(self._transport_kind(run))
            if transport is not None:
                transport.terminate(run)
        # Whatever is still in flight is finished by the batch's worker (a
        # fresh one if it died), which keeps stopping runs until none is left.
        self.dispatcher.ensure_worker(batch.id)
        while self._live_runs(batch) and self.clock.monotonic() < deadline:
            self.sleep(0.05)
        return self.view(batch.id)

    @staticmethod
    def _entry_of(reading: BatchReading, item_name: str) -> Mapping[str, Any]:
        entry = reading.entries.get(item_name)
        if entry is None:
            # A matrix or dirs entry is not an item: its items are, by full name.
            own = [name for name in reading.entries if name.startswith(item_name + "[")]
            what = f"items of {item_name!r}" if own else "items"
            listed = own or list(reading.entries)
            # A few names say what to type; a 100,000-item list does not.
            shown = ", ".join(listed[:20]) + (
                f" and {len(listed) - 20} more" if len(listed) > 20 else ""
            )
            raise NotFound(
                f"batch {reading.batch['id']} has no item {item_name!r} ({what}: {shown})",
                details={"batch": reading.batch["id"], "item": item_name},
            )
        return entry

    def item_detail(self, batch_id: str, item_name: str) -> ItemDetail:
        """One item in full: its decision, every attempt's run, blame, reason."""
        reading = self.reading(batch_id)
        entry = self._entry_of(reading, item_name)
        item = reading.items[item_name]
        run_ids = reading.attempt_run_ids(item)
        attempts = [
            attempt_document(reading.runs[run_id], reading.runs_prefix)
            for run_id in run_ids
            if run_id in reading.runs
        ]
        return ItemDetail.model_validate(
            {
                **reading.item_document(item_name),
                "batch_id": reading.batch["id"],
                "dir": entry["dir"],
                "timeout_s": entry["timeout_s"],
                "retries": entry["retries"],
                "retry_on": list(entry["retry_on"]),
                "attempts": attempts,
            }
        )

    def retry(self, batch_id: str) -> RetryResult:
        """Re-queue, as new attempts, every item that ended without passing
        (dependents skipped because of them included), and restart the worker.
        Decided under the batches lock on the fresh batch, so a retry never
        undoes a cancel it did not see."""
        requeued: list[str] = []

        def decide(batch: Batch) -> list[Record]:
            runs = self._runs_of([batch])
            now = self.clock.now()
            again: dict[str, Item] = {}
            for entry in batch.entries:
                item = batch.items[entry.name]
                run = runs.get(item.run_id or "")
                if item_is_final(entry, item, run, cancelled=batch.cancelled) and not item_passed(
                    item, run
                ):
                    again[entry.name] = item.next_attempt(now)
            requeued[:] = list(again)
            if not again:
                return []
            return [
                {"op": "uncancel", "batch": batch.id},
                {"op": "reopen", "batch": batch.id},
                items_record(batch.id, again),
            ]

        batch = self.batches.decide(batch_id, decide)
        if requeued:
            self.dispatcher.foreground_pass(batch.id)
        return RetryResult(requeued=requeued, batch=self.view(batch.id))

    def wait(
        self,
        batch_id: str,
        *,
        on_progress: Callable[[BatchReading], None],
        poll_s: float,
        max_poll_s: float = 0.5,
        item: str | None = None,
    ) -> Document:
        """Follow the batch until its worker has finished it — every item
        final and the finished mark written, so nothing changes after this
        returns — taking over its worker if it dies. With ``item``, only
        until that item is final (nothing more will happen to it: no retry
        follows); the batch may go on.

        A look costs O(items) over records already in memory, plus reading
        what was appended since the last look. Looks are spaced by
        WAIT_SPACING times their own cost, between ``poll_s`` and
        ``max_poll_s``: a small batch's end is seen within ``poll_s``, and a
        large one is not watched at the expense of its worker."""
        while True:
            began = self.clock.monotonic()
            reading = self.reading(batch_id)
            with without_gc():
                done = reading.done()
            # Shown before anything reads the stores again: a reading looks
            # at the stores' live records, and a batches read that lands
            # after the runs read shows runs that seem missing.
            on_progress(reading)
            batch_id = reading.batch["id"]
            if item is not None and reading.is_final(
                self._entry_of(reading, item), reading.items[item]
            ):
                return self.view_document(batch_id)
            if done and reading.batch.get("finished", False):
                return self.view_document(batch_id)
            if done:
                # Every item is final but no worker marked it finished: its
                # worker died at the very end. Let go of it in its place.
                self.dispatcher.finish_if_abandoned(batch_id)
            else:
                self.dispatcher.ensure_worker(batch_id)
            lease = self.batches.lease(batch_id)
            spent = self.clock.monotonic() - began
            # Woken early by the worker's exit: it exits right after marking
            # the batch finished, or when it dies (then it is taken over).
            self.sleep_unless_it_ends(
                lease.holder if lease is not None else None,
                min(max(poll_s, WAIT_SPACING * spent), max_poll_s),
            )

    def _transport_kind(self, run: Run) -> str:
        machine = self.dispatcher.fleet.get(run.machine)
        return machine.transport if machine else "local"

    def _live_runs(self, batch: Batch) -> list[Run]:
        return [run for run in self._runs_of([batch]).values() if not run.status.terminal]

    def run_finished(self, run_id: str) -> bool:
        return self.runs.get(run_id).status.terminal

    def log_target(
        self,
        batch_id: str,
        item_name: str,
        *,
        wait: bool = False,
        poll_s: float = 0.5,
        attempt: int | None = None,
        after: int = 0,
    ) -> LogTarget | None:
        """The run of the item's latest attempt (or of ``attempt``) later
        than attempt ``after``; with ``wait``, wait for it while the item is
        not final (a retry may follow). None if there is none (yet, or any
        more: the item is final)."""
        while True:
            reading = self.reading(batch_id)
            entry = self._entry_of(reading, item_name)
            targets = self._log_targets(reading, item_name)
            if attempt is not None:
                chosen = [target for target in targets if target.attempt == attempt]
                if not chosen:
                    tried = ", ".join(str(target.attempt) for target in targets) or "none"
                    raise NotFound(
                        f"item {item_name!r} has no attempt {attempt} (attempts: {tried})",
                        details={"item": item_name, "attempt": attempt},
                    )
                return chosen[0]
            later = [target for target in targets if target.attempt > after]
            if later:
                return later[-1] if after == 0 else later[0]
            if not wait or reading.is_final(entry, reading.items[item_name]):
                return None
            self.sleep(poll_s)

    @staticmethod
    def _log_targets(reading: BatchReading, item_name: str) -> list[LogTarget]:
        """Every attempt's run of the item, oldest first."""
        targets = []
        for run_id in reading.attempt_run_ids(reading.items[item_name]):
            run = reading.runs.get(run_id)
            if run is None:
                continue
            document = run_document(run, reading.runs_prefix)
            targets.append(
                LogTarget(
                    batch_id=reading.batch["id"],
                    item=item_name,
                    run_id=run_id,
                    attempt=run.get("attempt", 1),
                    log_path=document["log_path"],
                    finished=document["status"] in TERMINAL_STATUSES,
                )
            )
        return targets

    def machines(self) -> list[MachineView]:
        """The fleet with what each machine holds; a slurm machine with its
        cluster's nodes (one ``sinfo`` each)."""
        views = machine_views(
            self.dispatcher.fleet,
            self.runs.non_terminal(),
            self.dispatcher.drains.drained() if self.dispatcher.drains else {},
            self.dispatcher.health.health() if self.dispatcher.health else {},
        )
        for index, view in enumerate(views):
            machine = self.dispatcher.fleet.get(view.name)
            if machine is None or machine.transport != "slurm":
                continue
            try:
                nodes = cluster_nodes(machine, os.environ)
            except SlurmUnavailable as exc:
                views[index] = view.model_copy(update={"nodes_error": str(exc)})
            else:
                views[index] = view.model_copy(update={"nodes": nodes})
        return views

    def pools(self) -> list[PoolView]:
        """The fleet's pools with their machines, as ``pools.json`` has them."""
        fleet = self.dispatcher.fleet
        if not fleet.pools or self.dispatcher.pools is None:
            return []
        states = self.dispatcher.pools.pools()
        views = []
        for spec in fleet.pools:
            state = states.get(spec.name, PoolState())
            views.append(
                PoolView(
                    name=spec.name,
                    tags=list(spec.tags),
                    min=spec.min,
                    max=spec.max,
                    idle_timeout_s=spec.idle_timeout,
                    machines={name: m.state for name, m in sorted(state.machines.items())},
                    failed=state.failed_total,
                    last_error=state.last_error,
                    retry_at=state.retry_at,
                )
            )
        return views

    def _drain_store(self) -> DrainStore:
        if self.dispatcher.drains is None:
            raise StateError("this batchctl keeps no drain state")
        return self.dispatcher.drains

    def _fleet_machine(self, name: str) -> Machine:
        machine = self.dispatcher.fleet.get(name)
        if machine is None:
            close = self.dispatcher.fleet.close_names(name)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NotFound(
                f"no machine {name!r} in the fleet ({self.dispatcher.fleet.source}){hint}",
                details={"machine": name, "close": close},
            )
        return machine

    def drain(self, name: str, *, reason: str) -> DrainResult:
        """Take a machine out of dispatch for every batch: it finishes the
        runs it holds. Drained again, its reason is replaced."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_DRAIN_REASON or not reason.isprintable():
            raise InvalidInput(
                f"--reason: give a printable reason of 1 to {MAX_DRAIN_REASON} characters",
                details={"option": "--reason"},
            )
        self._fleet_machine(name)
        # Under the batches lock: a dispatch that read the fleet before the
        # drain has committed by then, so the runs counted below are all the
        # machine will have ("it holds no run" is then true).
        with self.batches.dispatch_paused():
            drain, before = self._drain_store().drain(
                name, reason=reason, by=self.identity, now=self.clock.now()
            )
            running = self.runs.held().get(name, 0)
        return DrainResult(
            machine=name,
            drained=True,
            changed=not before,
            drain=DrainView(reason=drain.reason, since=drain.since, by=drain.by),
            running=running,
        )

    def resume(self, name: str) -> DrainResult:
        """Give a drained machine work again, from the workers' next step.
        A machine that left the fleet while drained can still be resumed."""
        store = self._drain_store()
        health = self.dispatcher.health
        if name not in store.drained() and (health is None or name not in health.health()):
            self._fleet_machine(name)
        had = store.resume(name)
        lifted = health.lift(name) if health is not None else None
        return DrainResult(
            machine=name,
            drained=False,
            changed=had is not None or lifted is not None,
            drain=None,
            running=self.runs.held().get(name, 0),
            unquarantined=lifted is not None,
        )

    def list_batches(
        self, *, staging: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[BatchSummary]:
        """Batches newest first, those of ``staging`` and in ``state`` (running,
        done, cancelled) only if given, at most ``limit``."""
        runs = self.runs.stored()
        summaries = [
            batch_summary(BatchReading(batch, runs, self.runs.runs_prefix).summary())
            for batch in self.batches.all_raw()
            if staging is None or batch["staging"] == staging
        ]
        chosen = sorted(
            (summary for summary in summaries if state is None or summary.state == state),
            key=lambda summary: summary.created_at,
            reverse=True,
        )
        return chosen if limit is None else chosen[:limit]

    def prune(self, older_than: timedelta, *, dry_run: bool) -> PruneResult:
        """Remove every finished batch created more than ``older_than`` ago,
        with every run of it (all attempts), their run directories and its
        worker log, then compact both files. Unfinished batches are kept and
        said so. With ``dry_run``, report the same and change nothing."""
        cutoff = prune_cutoff(self.clock.now(), older_than)
        finished, kept = self._prunable(self.batches.created_before(cutoff))
        # With nothing to remove no state file is written: only snapshots no
        # batch names (a `run` killed while it stored them) are collected.
        if dry_run or not finished:
            if not dry_run and self.snapshots.root.is_dir():
                with self.batches.removing():
                    self._collect_snapshots()
            return PruneResult(
                dry_run=dry_run,
                created_before=cutoff,
                removed=finished,
                kept=kept,
                runs_removed=len(self.runs.ids_of_batches(finished)),
                left_behind=[],
            )
        # Chosen again under the batches lock: a batch retried since the read
        # above is unfinished now and stays whole. Its final views go first,
        # then its runs, so a prune cut short leaves batches that are still
        # finished and are removed by the next prune, never runs that no
        # batch owns nor a view showing runs that are gone.
        with self.batches.removing() as remove_batches:
            finished, kept = self._prunable(self.batches.created_before(cutoff))
            self.batches.forget_views(finished)
            run_ids = self.runs.remove_batches(finished)
            remove_batches(finished)
            # Under the lock: a `run` makes sure its snapshots are stored
            # under it before its batch names them (submit), so nothing a
            # batch is about to name is collected.
            left_behind = self._collect_snapshots()
        # Deleted after the locks are released: large run directories must
        # not keep the workers of other batches waiting for a lock.
        doomed = [self.runs.run_dir(run_id) for run_id in sorted(run_ids)]
        doomed += [self.batches.worker_log(batch_id) for batch_id in finished]
        left_behind += [failure for path in doomed if (failure := _delete(path))]
        return PruneResult(
            dry_run=False,
            created_before=cutoff,
            removed=finished,
            kept=kept,
            runs_removed=len(run_ids),
            left_behind=left_behind,
        )

    def _collect_snapshots(self) -> list[str]:
        """Collect what no batch names; call under the batches lock. What
        could not be collected, as prune reports what it left behind."""
        try:
            self.snapshots.collect(
                self.batches.snapshots_in_use(), now=self.clock.now().timestamp()
            )
        except OSError as exc:
            return [f"{self.snapshots.root}: {exc.strerror or exc}"]
        return []

    def _prunable(self, batches: list[Batch]) -> tuple[list[str], list[KeptBatch]]:
        runs = self.runs.stored()
        finished: list[str] = []
        kept: list[KeptBatch] = []
        for batch in batches:
            if BatchReading(self.batches.raw(batch.id), runs, self.runs.runs_prefix).done():
                finished.append(batch.id)
            else:
                kept.append(KeptBatch(id=batch.id, reason=NOT_FINISHED))
        return finished, kept


class _LazyReasons:
    """Explains queued items from the fleet, loaded on the first question:
    a finished batch's view never needs the fleet file."""

    def __init__(self, context: Callable[[], FleetContext]) -> None:
        self._make_context = context
        self._context: FleetContext | None = None

    def queued_reason(self, selector: str, not_before: str | None) -> tuple[str, str]:
        if self._context is None:
            self._context = self._make_context()
        return self._context.queued_reason(selector, not_before)
