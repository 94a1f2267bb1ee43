"""Builds the service a command talks to, from options and environment."""

import os
import socket
import sys
import time

from batchctl.cli.settings import Settings, load_settings, user_at_host
from batchctl.engine.dispatch import Dispatcher
from batchctl.engine.lease import LeaseJudge
from batchctl.engine.service import BatchService
from batchctl.engine.worker import spawn_worker
from batchctl.model.clock import Clock, SystemClock
from batchctl.model.errors import StateError
from batchctl.model.fleet import Fleet, FleetSource, load_fleet
from batchctl.state.batches import BatchStore
from batchctl.state.drains import DrainStore
from batchctl.state.durations import DurationStore
from batchctl.state.health import HealthStore
from batchctl.state.pools import PoolStore, with_pool_machines
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.detached import DetachedTransport
from batchctl.transports.local import EntryLookup, LocalTransport
from batchctl.transports.processes import (
    identity_alive,
    identity_of,
    pid_alive,
    sleep_unless_it_ends,
    this_process,
)
from batchctl.transports.sim import SimTransport
from batchctl.transports.slurm import SlurmTransport
from batchctl.transports.testdir import hash_test_dir


def resolve_fleet(settings: Settings, clock: Clock) -> Fleet:
    """The fleet file (or the default fleet) with inventory machines, then
    the pools' ready machines, merged in. The inventory clients (httpx) are
    imported only when a fleet has one."""

    def warn(message: str) -> None:
        print(f"batchctl: warning: {message}", file=sys.stderr)

    fleet = load_fleet(settings.fleet_path)
    if fleet.inventories:
        from batchctl.inventory.resolve import InventoryResolver

        resolver = InventoryResolver(
            settings.state_dir / "inventory-cache.json", clock, env=os.environ, warn=warn
        )
        fleet = resolver.resolve(fleet)
    if fleet.pools:
        try:
            fleet = with_pool_machines(fleet, PoolStore(settings.state_dir).pools(), warn)
        except StateError as error:
            # A damaged pools.json must not stop every batch: the file's
            # machines are left out (and no pool is tended) until it is fixed.
            warn(f"pool machines left out: {error.message}")
    return fleet


def open_dispatcher(settings: Settings, *, long_lived: bool = False) -> Dispatcher:
    """``long_lived``: for the worker, which keeps the state in memory for the
    life of a batch (its stores share repeated values)."""
    clock = SystemClock()
    batches = BatchStore(
        settings.state_dir, lock_timeout=settings.lock_timeout, share_values=long_lived
    )
    runs = RunStore(settings.state_dir, lock_timeout=settings.lock_timeout, share_values=long_lived)
    fleet = FleetSource(lambda: resolve_fleet(settings, clock))
    transport = DetachedTransport(
        runs,
        clock,
        kill_grace_s=settings.tuning.kill_grace_s,
        fleet_path=settings.fleet_path,
        fleet=fleet,
        executor_stale_s=max(settings.tuning.lease_stale_s, 3 * settings.tuning.heartbeat_s),
    )
    this_host = socket.gethostname()
    snapshots = SnapshotStore(settings.state_dir)
    return Dispatcher(
        batches=batches,
        runs=runs,
        fleet_source=fleet,
        fleet_path=settings.fleet_path,
        transports={
            "local": LocalTransport(
                runs,
                clock,
                entries=EntryLookup(batches.raw),
                fleet=fleet,
                snapshots=snapshots,
                kill_grace_s=settings.tuning.kill_grace_s,
            ),
            "ssh": transport,
            "sim": SimTransport(runs, clock, fleet),
            "slurm": SlurmTransport(
                runs, clock, entries=EntryLookup(batches.raw), fleet=fleet, snapshots=snapshots
            ),
        },
        clock=clock,
        tuning=settings.tuning,
        this_host=this_host,
        this_pid=os.getpid(),
        judge=LeaseJudge(
            stale_s=settings.tuning.lease_stale_s,
            monotonic=clock.monotonic,
            identity_alive=identity_alive,
            this_host=this_host,
            pid_alive=pid_alive,
        ),
        this_process=this_process,
        identity_of=identity_of,
        hash_dir=hash_test_dir,
        snapshots=snapshots,
        drains=DrainStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        durations=DurationStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        health=HealthStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        pools=PoolStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        spawn_worker=lambda batch_id, fleet, token: spawn_worker(
            settings.state_dir, batch_id, fleet, token, log_path=batches.worker_log(batch_id)
        ),
    )


def open_service(settings: Settings) -> BatchService:
    dispatcher = open_dispatcher(settings)
    return BatchService(
        batches=dispatcher.batches,
        runs=dispatcher.runs,
        clock=dispatcher.clock,
        identity=user_at_host(),
        dispatcher=dispatcher,
        snapshots=dispatcher.snapshots or SnapshotStore(settings.state_dir),
        sleep=time.sleep,
        sleep_unless_it_ends=sleep_unless_it_ends,
    )


__all__ = ["load_settings", "open_dispatcher", "open_service"]
