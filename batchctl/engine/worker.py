"""The detached backfill worker (``batchctl _batch-worker ID``), and how it is started."""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

from batchctl.engine.dispatch import Dispatcher
from batchctl.engine.pools import PoolKeeper
from batchctl.engine.scheduler import Scheduler
from batchctl.model.clock import utc_iso
from batchctl.model.errors import InvalidInput, LeaseLost, StateError
from batchctl.transports.processes import spawn_detached

SLOW_STEP_S = 0.5
# How often a worker adds the durations it learned to the durations file
# (and once more when its batch is done): one write now and then, not per run.
KEEP_DURATIONS_S = 30.0
# How long a worker stopped by SIGTERM may spend deprovisioning the pool
# machines it would leave running for nobody: well within the usual grace
# before a SIGKILL (systemd gives 90 s, Kubernetes 30 s).
LEAVE_POOLS_S = 20.0
LEASE_TOKEN_VARIABLE = "BATCHCTL_LEASE_TOKEN"  # noqa: S105 - a variable name, not a secret


def worker_argv(batch_id: str, state_dir: Path, fleet: str | None) -> list[str]:
    """The worker re-invokes this very batchctl with the same state and fleet."""
    argv = [
        sys.executable,
        "-m",
        "batchctl",
        "_batch-worker",
        batch_id,
        "--state-dir",
        str(state_dir),
    ]
    if fleet:
        argv += ["--fleet", fleet]
    return argv


def spawn_worker(
    state_dir: Path, batch_id: str, fleet: str | None, token: str, *, log_path: Path
) -> int:
    """Start a detached worker that adopts the lease ``token`` (passed in its
    environment, not its argv, so other users cannot read it from ps)."""
    env = {**os.environ, LEASE_TOKEN_VARIABLE: token}
    return spawn_detached(worker_argv(batch_id, state_dir, fleet), log_path, env=env)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


class LeaseKeeper:
    """Renews the lease from a thread of its own, every ``renew_s``, however
    long a step takes: a slow step never makes a live worker look dead.
    ``lost`` is set once the lease is no longer ours."""

    def __init__(self, dispatcher: Dispatcher, batch_id: str, token: str) -> None:
        self.dispatcher = dispatcher
        self.batch_id = batch_id
        self.token = token
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.dispatcher.tuning.lease_renew_s):
            try:
                if not self.dispatcher.renew_lease(self.batch_id, self.token):
                    self.lost.set()
                    return
            except StateError:
                continue  # a busy lock: try again at the next renewal


def run_worker(
    batch_id: str,
    dispatcher: Dispatcher,
    *,
    # (file descriptors, seconds): return when one is readable or time is up
    wait: Callable[[list[int], float], None],
    log: Callable[[str], None],
    handed_token: str | None = None,
) -> int:
    """Step the batch every tick until every item is terminal; stop at once
    if the lease is lost (a newer worker took over)."""
    clock = dispatcher.clock
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    if handed_token and dispatcher.renew_lease(
        batch_id, handed_token, holder=dispatcher.this_process()
    ):
        token: str | None = handed_token
    else:
        token = dispatcher.take_lease(batch_id)
    if token is None:
        log(f"batch {batch_id} is finished or served by another live worker; exiting")
        return 0
    log(f"worker {dispatcher.this_pid} holds batch {batch_id}")
    scheduler = dispatcher.scheduler(token)
    pools = dispatcher.pool_keeper()
    fleet_reload = _FleetReload(dispatcher, scheduler, log)
    stats = WorkerStats()
    began = clock.monotonic()
    scheduler.load(batch_id, clock.now())
    stats.load_s = clock.monotonic() - began
    kept_at = clock.monotonic()

    def keep_durations() -> None:
        nonlocal kept_at
        kept_at = clock.monotonic()
        trouble = scheduler.keep_durations(batch_id, clock.now())
        if trouble is not None:
            log(f"{utc_iso(clock.now())} durations not kept: {trouble}")

    with LeaseKeeper(dispatcher, batch_id, token) as keeper:
        try:
            while not stop.requested and not keeper.lost.is_set():
                began = clock.monotonic()
                scheduler.tend_health(clock.now())
                if pools is not None and pools.tend(clock.now()):
                    fleet_reload.wanted = True
                fleet_reload.try_now(clock.now())
                report = scheduler.step(batch_id, clock.now())
                _log_events(log, clock.now(), scheduler.health_events(), pools)
                took = clock.monotonic() - began
                stats.saw_step(took)
                if took > SLOW_STEP_S:
                    log(
                        f"{utc_iso(clock.now())} slow step: {took:.2f}s "
                        f"({len(report.dispatched)} dispatched, {len(report.skipped)} skipped)"
                    )
                for label, names in (
                    ("dispatched", report.dispatched),
                    ("requeued", report.requeued),
                    ("skipped", report.skipped),
                    ("interrupted", report.interrupted),
                ):
                    if names:
                        log(f"{utc_iso(clock.now())} {label}: {_names(names)}")
                if report.done or clock.monotonic() - kept_at > KEEP_DURATIONS_S:
                    keep_durations()
                if report.done:
                    # The files are compacted before the batch is marked
                    # finished: whoever waited for it reads settled files,
                    # with no worker still busy beside it. A retry that came
                    # in meanwhile keeps the batch (and this worker) going.
                    trouble = dispatcher.tidy_state()
                    if trouble is not None:
                        log(f"{utc_iso(clock.now())} not compacted: {trouble}")

                    def last_words(view_trouble: str | None) -> None:
                        # Logged before the finished mark, which is the last
                        # thing written: `--wait` returns once it sees the
                        # mark. After the final view: its bytes and memory
                        # count in the stats.
                        if view_trouble is not None:
                            log(f"{utc_iso(clock.now())} final view not written: {view_trouble}")
                        log(f"{utc_iso(clock.now())} batch {batch_id} is done")
                        log(stats.line(dispatcher))

                    if dispatcher.finish_batch(batch_id, token, last_words):
                        if pools is not None:
                            _see_pools_idle(batch_id, dispatcher, pools, stop, wait, log)
                        return 0
                    log(f"{utc_iso(clock.now())} items of batch {batch_id} queued again; going on")
                # Sleep to the next tick, or less if a run is due to end sooner.
                due = scheduler.due_in(clock.now())
                tick = dispatcher.tuning.tick_s
                # or at once when a supervised run ends (its pidfd turns readable).
                wait(scheduler.wakeup_fds(), tick if due is None else min(tick, due))
            if stop.requested and not keeper.lost.is_set() and pools is not None:
                _leave_pools(batch_id, dispatcher, pools, wait, log)
        except LeaseLost:
            pass
        finally:
            scheduler.close()
    if keeper.lost.is_set() or not stop.requested:
        log("lease lost to another worker; exiting")
        return 0
    keep_durations()  # what it learned since the last time is not lost with it
    log("stopped by SIGTERM; runs in flight continue and a later worker takes over")
    dispatcher.release_lease(batch_id, token)
    return 0


class _FleetReload:
    """Reloads the worker's fleet once its pools' ready machines changed. A
    fleet that no longer resolves (its file edited into something invalid,
    an inventory down) must not end the worker, nor every worker after it:
    the fleet as it was is kept, the reason logged once per new reason, and
    the reload tried again each tick until it works."""

    def __init__(self, dispatcher: Dispatcher, scheduler: Scheduler, log: Callable[[str], None]):
        self.dispatcher = dispatcher
        self.scheduler = scheduler
        self.log = log
        self.wanted = False
        self._said: str | None = None

    def try_now(self, now: datetime) -> None:
        if not self.wanted:
            return
        try:
            fleet = self.dispatcher.fleet_source.reload()
        except (InvalidInput, StateError) as error:  # a busy inventory cache too
            if error.message != self._said:
                self._said = error.message
                self.log(
                    f"{utc_iso(now)} fleet not reloaded, dispatching to the fleet as it was: "
                    f"{error.message}"
                )
            return
        self.wanted = False
        if self._said is not None:
            self._said = None
            self.log(f"{utc_iso(now)} fleet reloaded")
        self.scheduler.use_fleet(fleet)


def _log_events(
    log: Callable[[str], None], now: datetime, health: list[str], pools: PoolKeeper | None
) -> None:
    """Quarantines, returns and pool machines' comings and goings, a line each."""
    events = [*health]
    if pools is not None:
        events, pools.events = [*events, *pools.events], []
    for event in events:
        log(f"{utc_iso(now)} {event}")


def _leave_pools(
    batch_id: str,
    dispatcher: Dispatcher,
    pools: PoolKeeper,
    wait: Callable[[list[int], float], None],
    log: Callable[[str], None],
) -> None:
    """A worker stopped by SIGTERM deprovisions the pool machines it would
    leave running for nobody (down to each pool's min), unless another live
    batch's worker is there to tend them. Bounded by ``LEAVE_POOLS_S``, in
    which the lease is still renewed: what is not done by then (a slow
    deprovision, a machine busy with a run) is left to the next worker."""
    clock = dispatcher.clock
    try:
        if any(
            other != batch_id and dispatcher.lease_live(other, lease)
            for other, lease, _, _, _ in dispatcher.batches.demands()
        ):
            return
    except StateError:
        return  # a busy lock: better leave them to the next worker than wait
    began = clock.monotonic()
    pools.leave(clock.now())
    while pools.wind_down(clock.now()) and clock.monotonic() - began < LEAVE_POOLS_S:
        _log_events(log, clock.now(), [], pools)
        wait([], dispatcher.tuning.tick_s)
    _log_events(log, clock.now(), [], pools)


def _see_pools_idle(
    batch_id: str,
    dispatcher: Dispatcher,
    pools: PoolKeeper,
    stop: _Stop,
    wait: Callable[[list[int], float], None],
    log: Callable[[str], None],
) -> None:
    """After its batch is done, a worker stays to deprovision the pools'
    machines once idle, unless a live batch's worker is there to do it: a
    machine must not be left running because the batch that wanted it ended.
    Bounded by the pools' idle_timeout and their deprovision commands."""
    clock = dispatcher.clock
    while not stop.requested and (pools.busy() or pools.alive() > 0):
        others = [
            other
            for other, lease, _, _, _ in dispatcher.batches.demands()
            if other != batch_id and dispatcher.lease_live(other, lease)
        ]
        # Its own commands are seen to their end: their outcome is known
        # only to it.
        if others and not pools.busy():
            return
        pools.tend(clock.now())
        _log_events(log, clock.now(), [], pools)
        wait([], dispatcher.tuning.tick_s)
    log(f"{utc_iso(clock.now())} pool machines deprovisioned; exiting")


class WorkerStats:
    """What a worker reports when it is done: how many steps it took, the
    longest, the bytes it wrote to the state files and its peak memory."""

    def __init__(self) -> None:
        self.load_s = 0.0
        self.steps = 0
        self.longest_s = 0.0

    def saw_step(self, seconds: float) -> None:
        self.steps += 1
        self.longest_s = max(self.longest_s, seconds)

    def line(self, dispatcher: Dispatcher) -> str:
        written = dispatcher.batches.file.bytes_written + dispatcher.runs.file.bytes_written
        peak_kib = peak_rss_kib()
        return (
            f"stats: load_s={self.load_s:.3f} steps={self.steps} "
            f"longest_step_s={self.longest_s:.3f} "
            f"state_bytes_written={written} peak_rss_kib={peak_kib}"
        )


def peak_rss_kib() -> int:
    """This process's own peak resident memory: the kernel's high-water mark
    of its address space (VmHWM). Not ``ru_maxrss``, which a process started
    by fork and exec inherits from its parent (the command that spawned the
    worker, holding a 100,000-item plan) and keeps across the exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _names(names: list[str], shown: int = 20) -> str:
    """A worker log line stays readable when a step moves thousands of items."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"
