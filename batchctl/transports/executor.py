"""The executor of one run (``batchctl _run-executor RUN_ID``).

It claims the run (so a run started twice executes once), has a runner put
the test in place and start it (locally, or over ssh), enforces the timeout
(TERM, grace, KILL of the whole tree), heartbeats the run, collects the
artifacts and records the outcome. SIGTERM (from ``cancel``) stops the test
and ends the run ``interrupted``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from batchctl.model.clock import Clock
from batchctl.model.environment import run_variables
from batchctl.model.errors import LockTimeout
from batchctl.model.fleet import Machine
from batchctl.model.models import Entry, Run, RunStatus
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.inputs import artifacts_of_passing_run
from batchctl.transports.processes import this_process
from batchctl.transports.rundir import beat, write_pgid, write_result
from batchctl.transports.runners.base import Ended, Runner, batchctl_variables
from batchctl.transports.workcopy import NotStarted, inputs_given, work_copy

WAIT_SLICE_S = 0.1
RECORD_ATTEMPTS = 20
RECORD_RETRY_S = 1.0


@dataclass(frozen=True)
class ExecutorSettings:
    kill_grace_s: float
    heartbeat_s: float


class _StopRequested:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def execute_run(
    run_id: str,
    *,
    runs: RunStore,
    batches: BatchStore,
    clock: Clock,
    settings: ExecutorSettings,
    machine_of: Callable[[str], Machine],
    env_pass_for: Callable[[Machine, Sequence[str]], tuple[str, ...]],
    make_runner: Callable[[Run, Entry, Machine, dict[str, str]], Runner],
    environ: Mapping[str, str] = os.environ,
    snapshots: SnapshotStore | None = None,
) -> Run:
    """``environ`` is the controller's environment: what ``env_pass`` names
    comes from it; the rest of a run's environment is the machine's base."""
    stop = _StopRequested()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    me = this_process()

    def claim(run: Run) -> Run | None:
        if run.status is not RunStatus.PENDING or run.claimed:
            return None
        return run.model_copy(
            update={"status": RunStatus.RUNNING, "started_at": clock.now(), "supervisor": me}
        )

    # The claim is decided under the runs lock: of two executors started for
    # one run, one claims it and the other leaves.
    run = runs.update(run_id, claim)
    if run.supervisor != me or run.status is not RunStatus.RUNNING:
        return run  # someone else executes it, or it was cancelled first
    run_dir = runs.run_dir(run.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    beats = 0
    beat(run_dir, beats)

    batch = batches.get(run.batch_id)
    entry = next(e for e in batch.entries if e.name == run.item)

    def not_started(error_code: str, message: str) -> Run:
        """The run ends ``error`` before its test could start, saying why."""
        return _record(
            runs,
            run_dir,
            run.id,
            Ended(RunStatus.ERROR, error_code=error_code, message=message),
            clock,
        )

    try:
        machine = machine_of(run.machine)
    except LookupError:
        return not_started("machine_unknown", f"machine {run.machine!r} is no longer in the fleet")
    try:
        if entry.snapshot is not None and snapshots is not None:
            # The runner uploads the snapshot, put in the run directory first.
            work = work_copy(
                run_dir, test_dir=entry.dir, snapshot=entry.snapshot, snapshots=snapshots
            )
            entry = entry.model_copy(update={"abs_dir": str(work)})
        given = inputs_given(
            run_dir,
            entry.inputs,
            lambda item: artifacts_of_passing_run(runs, batches.raw(run.batch_id), item),
        )
    except NotStarted as problem:
        return _record(runs, run_dir, run.id, problem.ended, clock)
    env = run_variables(
        controller=environ,
        env_pass=env_pass_for(machine, entry.env_pass),
        entry_env=entry.env,
        batchctl={**batchctl_variables(run, batch.staging), **given},
    )
    runner = make_runner(run, entry, machine, env)
    Path(run.artifacts_path).mkdir(parents=True, exist_ok=True)

    with open(run.log_path, "ab") as log:
        failed = runner.start(log)
    # Uploaded (or not to be): the local copies made for the upload go, so
    # an ssh run keeps no second copy of its test and inputs per attempt.
    for uploaded in ("work", "inputs"):
        if entry.snapshot is not None or uploaded == "inputs":
            shutil.rmtree(run_dir / uploaded, ignore_errors=True)
    if failed is not None:
        return _record(runs, run_dir, run.id, failed, clock)
    if runner.pgid is not None:
        write_pgid(run_dir, runner.pgid)

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
            beats += 1
            beat(run_dir, beats)
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
    return _record(runs, run_dir, run.id, ended, clock)


def _record(runs: RunStore, run_dir: Path, run_id: str, ended: Ended, clock: Clock) -> Run:
    """Keep the outcome in the run directory first, then record it; a busy
    lock is waited out rather than losing a finished run's outcome (and if
    this process dies meanwhile, the next worker reads the file)."""
    write_result(run_dir, ended)
    attempts = 0
    while True:
        try:
            return runs.finish(
                run_id,
                ended.status,
                now=clock.now(),
                exit_code=ended.exit_code,
                error_code=ended.error_code,
                message=ended.message,
            )
        except LockTimeout:
            attempts += 1
            if attempts >= RECORD_ATTEMPTS:
                raise
            time.sleep(RECORD_RETRY_S)
