"""Leases and dispatch passes (SPEC §6): who may step a batch, and when a
detached worker has to be started."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchctl.engine.health import HealthKeeper
from batchctl.engine.lease import LeaseJudge
from batchctl.engine.pools import PoolKeeper
from batchctl.engine.scheduler import Scheduler, SchedulerSettings, StepReport
from batchctl.model.clock import Clock
from batchctl.model.errors import LeaseLost, StateError
from batchctl.model.fleet import Fleet, FleetSource
from batchctl.model.models import Lease, ProcessIdentity
from batchctl.model.policy import Backoff
from batchctl.model.viewdoc import BatchReading
from batchctl.state import final_views
from batchctl.state.batches import BatchStore
from batchctl.state.drains import DrainStore
from batchctl.state.durations import DurationStore
from batchctl.state.health import HealthStore
from batchctl.state.pools import PoolStore
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.base import Transport


@dataclass(frozen=True)
class Tuning:
    """Timing knobs, read from the environment by the CLI (docs/decisions.md)."""

    tick_s: float = 1.0
    lease_stale_s: float = 30.0
    kill_grace_s: float = 10.0
    heartbeat_s: float = 10.0
    retry_base_s: float = 5.0
    retry_cap_s: float = 300.0
    # Ready items longest critical path first; False: first in, first out
    # ($BATCHCTL_READY_ORDER=fifo, for measuring what the order buys).
    critical_path_first: bool = True

    @property
    def lease_renew_s(self) -> float:
        return self.lease_stale_s / 6


@dataclass
class Dispatcher:
    batches: BatchStore
    runs: RunStore
    fleet_source: FleetSource
    fleet_path: Path | None
    transports: Mapping[str, Transport]
    clock: Clock
    tuning: Tuning
    this_host: str
    this_pid: int
    judge: LeaseJudge
    # The identity of this process, and of another by pid (None if gone).
    this_process: Callable[[], ProcessIdentity]
    identity_of: Callable[[int], ProcessIdentity | None]
    hash_dir: Callable[[Path], str]
    # (batch id, fleet file, lease token) -> pid of the started worker
    spawn_worker: Callable[[str, str | None, str], int]
    snapshots: SnapshotStore | None = None
    drains: DrainStore | None = None
    durations: DurationStore | None = None
    health: HealthStore | None = None
    pools: PoolStore | None = None

    @property
    def fleet(self) -> Fleet:
        return self.fleet_source.get()

    def lease_live(self, batch_id: str, lease: Lease | None) -> bool:
        return self.judge.live(batch_id, lease)

    def _new_lease(self, token: str, holder: ProcessIdentity | None, beat: int) -> Lease:
        return Lease(
            token=token,
            pid=holder.pid if holder else self.this_pid,
            host=self.this_host,
            heartbeat_at=self.clock.now(),
            fleet=str(self.fleet_path) if self.fleet_path else None,
            holder=holder,
            beat=beat,
        )

    def take_lease(self, batch_id: str) -> str | None:
        """A fresh lease token if no live holder has the batch, else None."""
        token = secrets.token_hex(16)
        lease = self._new_lease(token, self.this_process(), 0)
        taken = self.batches.swap_lease(
            batch_id,
            when=lambda current: not self.lease_live(batch_id, current),
            new_lease=lease,
            unless_finished=True,
        )
        return token if taken else None

    def renew_lease(
        self, batch_id: str, token: str, *, holder: ProcessIdentity | None = None
    ) -> bool:
        """Count one more renewal of our lease (or, with ``holder``, hand it
        to that process). False if the lease is no longer ours."""
        current = self.batches.lease(batch_id)
        if current is None or current.token != token:
            return False
        renewed = self._new_lease(token, holder or current.holder, current.beat + 1)
        return self.batches.swap_lease(
            batch_id,
            when=lambda lease: lease is not None and lease.token == token,
            new_lease=renewed.model_copy(update={"fleet": current.fleet or renewed.fleet}),
        )

    def release_lease(self, batch_id: str, token: str) -> None:
        self.batches.swap_lease(
            batch_id,
            when=lambda lease: lease is not None and lease.token == token,
            new_lease=None,
        )

    def finish_batch(
        self,
        batch_id: str,
        token: str,
        last_words: Callable[[str | None], None] | None = None,
    ) -> bool:
        """Let go of a batch seen done, unless a retry queued items again
        meanwhile (False: go on serving it), with its final view and the
        worker's ``last_words`` before the finished mark. See
        BatchStore.finish."""
        return self.batches.finish(
            batch_id, token, write_view=self._write_final_view, last_words=last_words
        )

    def _write_final_view(self, batch: Mapping[str, Any]) -> int:
        """O(items + their runs), a chunk of item views held at a time."""
        reading = BatchReading(batch, self.runs.stored(), self.runs.runs_prefix)
        return final_views.write(self.batches.state_dir, reading, self.runs.runs_prefix)

    def finish_if_abandoned(self, batch_id: str) -> None:
        """Mark finished a batch whose items are all final and whose worker is
        gone without marking it (killed at the very end): take its dead lease
        and let go, as the worker would have. A live worker is left to it."""
        token = self.take_lease(batch_id)
        if token is not None and not self.finish_batch(batch_id, token):
            self.release_lease(batch_id, token)

    def tidy_state(self) -> str | None:
        """After a batch ends: fold large journals into their snapshots, so
        whoever reads the finished batch parses snapshots (journal.tidy).
        Only an optimisation: a failure (a full disk, a busy lock) is
        returned as a sentence for the log, not raised."""
        try:
            self.batches.file.tidy()
            self.runs.file.tidy()
        except StateError as error:
            return error.message
        return None

    def pool_keeper(self) -> PoolKeeper | None:
        """What provisions and deprovisions the fleet's pools, from a worker."""
        if self.pools is None or not self.fleet.pools:
            return None
        return PoolKeeper(
            self.pools,
            lambda: self.fleet,
            batches=self.batches,
            runs=self.runs,
            judge=self.judge,
            state_dir=self.pools.path.parent,
            by=f"{self.this_host}:{self.this_pid}",
            now=self.clock.now(),
        )

    def scheduler(self, token: str | None) -> Scheduler:
        return Scheduler(
            batches=self.batches,
            runs=self.runs,
            fleet=self.fleet,
            transports=self.transports,
            lease_token=token,
            settings=SchedulerSettings(
                launch_grace_s=self.tuning.lease_stale_s,
                backoff=Backoff(base_s=self.tuning.retry_base_s, cap_s=self.tuning.retry_cap_s),
                critical_path_first=self.tuning.critical_path_first,
            ),
            hash_dir=self.hash_dir,
            lease_judge=self.judge,
            snapshot_has_file=self.snapshots.has_file if self.snapshots else None,
            drained=self.drains.drained if self.drains else None,
            durations=self.durations,
            health=HealthKeeper(
                self.health,
                self.fleet,
                state_dir=self.health.path.parent,
                by=f"{self.this_host}:{self.this_pid}",
            )
            if self.health
            else None,
            pools=self.pools if self.fleet.pools else None,
        )

    def foreground_pass(self, batch_id: str) -> StepReport | None:
        """One dispatch pass under a short-lived lease, then hand the batch to
        a detached worker if work remains. None: a live worker has it already."""
        token = self.take_lease(batch_id)
        if token is None:
            return None
        try:
            report = self.scheduler(token).step(batch_id, self.clock.now())
        except LeaseLost:
            return None
        if not (report.done and self.finish_batch(batch_id, token)):
            self._hand_to_worker(batch_id, token, self._fleet_arg(None))
        return report

    def _fleet_arg(self, lease: Lease | None) -> str | None:
        if lease is not None and lease.fleet:
            return lease.fleet
        return str(self.fleet_path) if self.fleet_path else None

    def _hand_to_worker(self, batch_id: str, token: str, fleet: str | None) -> None:
        """Pass a lease we hold to a new worker process. The lease names the
        worker at once, so nobody else starts a second worker meanwhile, and
        a worker that fails to start is seen dead at once."""
        pid = self.spawn_worker(batch_id, fleet, token)
        holder = self.identity_of(pid) or self.this_process().model_copy(
            update={"pid": pid, "start_ticks": 0}
        )
        self.renew_lease(batch_id, token, holder=holder)

    def ensure_worker(self, batch_id: str) -> bool:
        """Start a worker for an unfinished batch nobody serves (a takeover of a
        dead lease). True if one was started. O(1) in the batch's size."""
        if self.batches.finished(batch_id):
            return False
        lease = self.batches.lease(batch_id)
        if self.lease_live(batch_id, lease):
            return False
        token = self.take_lease(batch_id)
        if token is None:
            return False
        self._hand_to_worker(batch_id, token, self._fleet_arg(lease))
        return True
