"""The executor of one run (``batchctl _run-executor RUN_ID``).

It claims the run (so a run started twice executes once), has a runner put
the test in place and start it (locally, or over ssh), enforces the timeout
(TERM, grace, KILL of the whole tree), heartbeats the run, collects the
artifacts and records the outcome. SIGTERM (from ``cancel``) stops the test
and ends the run ``interrupted``.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType

from batchctl.model.clock import Clock
from batchctl.model.fleet import Machine
from batchctl.model.models import Batch, Entry, Run, RunStatus
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore
from batchctl.transports.processes import process_start_time
from batchctl.transports.runners.base import Ended, Runner

WAIT_SLICE_S = 0.1


@dataclass(frozen=True)
class ExecutorSettings:
    kill_grace_s: float
    heartbeat_s: float


def run_environment(batch: Batch, entry: Entry, run: Run) -> dict[str, str]:
    """The entry's env plus batchctl's variables (SPEC §2). Local runs add the
    controller's environment; remote runs get the remote login environment."""
    return {
        **entry.env,
        "BATCHCTL_BATCH_ID": batch.id,
        "BATCHCTL_ITEM": run.item,
        "BATCHCTL_RUN_ID": run.id,
        "BATCHCTL_ATTEMPT": str(run.attempt),
        "BATCHCTL_STAGING": batch.staging,
        "BATCHCTL_MACHINE": run.machine,
        "BATCHCTL_ARTIFACTS_DIR": run.artifacts_path,
    }


class _StopRequested:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _heartbeat(now: datetime) -> Callable[[Run], Run]:
    return lambda run: run.model_copy(update={"heartbeat_at": now})


def execute_run(
    run_id: str,
    *,
    runs: RunStore,
    batches: BatchStore,
    clock: Clock,
    settings: ExecutorSettings,
    machine_of: Callable[[str], Machine],
    make_runner: Callable[[Run, Entry, Machine, dict[str, str]], Runner],
) -> Run:
    stop = _StopRequested()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    pid = os.getpid()
    started = process_start_time(pid)
    host = socket.gethostname()

    def claim(run: Run) -> Run | None:
        if run.status is not RunStatus.PENDING or run.claimed:
            return None
        now = clock.now()
        return run.model_copy(
            update={
                "status": RunStatus.RUNNING,
                "started_at": now,
                "heartbeat_at": now,
                "executor_pid": pid,
                "executor_host": host,
                "executor_started": started,
            }
        )

    run = runs.update(run_id, claim)
    if run.executor_pid != pid or run.status is not RunStatus.RUNNING:
        return run  # someone else executes it, or it was cancelled first

    batch = batches.get(run.batch_id)
    entry = next(e for e in batch.entries if e.name == run.item)
    try:
        machine = machine_of(run.machine)
    except LookupError:
        return _record(
            runs,
            run.id,
            Ended(
                RunStatus.ERROR,
                error_code="machine_unknown",
                message=f"machine {run.machine!r} is no longer in the fleet",
            ),
            clock,
        )
    env = run_environment(batch, entry, run)
    runner = make_runner(run, entry, machine, env)
    Path(run.artifacts_path).mkdir(parents=True, exist_ok=True)

    with open(run.log_path, "ab") as log:
        failed = runner.start(log)
    if failed is not None:
        return _record(runs, run.id, failed, clock)
    if runner.pgid is not None:
        pgid = runner.pgid
        runs.update(run.id, lambda current: current.model_copy(update={"pgid": pgid}))

    deadline = clock.monotonic() + entry.timeout_s
    next_heartbeat = clock.monotonic() + settings.heartbeat_s
    ended: Ended | None = None
    while not runner.wait(WAIT_SLICE_S):
        if stop.requested:
            ended = Ended(RunStatus.INTERRUPTED, message="cancelled")
        elif clock.monotonic() >= deadline:
            ended = Ended(RunStatus.TIMEOUT, message=f"timed out after {entry.timeout_s}s")
        if ended is not None:
            runner.stop()
            break
        if clock.monotonic() >= next_heartbeat:
            next_heartbeat = clock.monotonic() + settings.heartbeat_s
            runs.update(run.id, _heartbeat(clock.now()))
    if ended is None:
        ended = runner.result()
    collect_failure = runner.collect()
    runner.cleanup()
    if collect_failure is not None:
        if ended.status is RunStatus.SUCCEEDED:
            ended = collect_failure
        else:
            ended = replace(
                ended, message=f"{ended.message or ''}; {collect_failure.message}".lstrip("; ")
            )
    return _record(runs, run.id, ended, clock)


def _record(runs: RunStore, run_id: str, ended: Ended, clock: Clock) -> Run:
    return runs.finish(
        run_id,
        ended.status,
        now=clock.now(),
        exit_code=ended.exit_code,
        error_code=ended.error_code,
        message=ended.message,
    )
