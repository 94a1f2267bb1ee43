"""The executor of one local run (``batchctl _run-executor RUN_ID``).

It claims the run (so a run started twice executes once), runs the entrypoint
in a fresh copy of the test directory in its own process group with output
going straight to ``output.log``, enforces the timeout (TERM, grace, KILL of
the whole group), heartbeats the run, and records the outcome. SIGTERM (from
``cancel``) stops the test and ends the run ``interrupted``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

from batchctl.core.fleet import ENTRYPOINTS, this_os
from batchctl.core.models import Batch, Entry, Run, RunStatus
from batchctl.runtime.clock import Clock
from batchctl.runtime.processes import group_alive, kill_group, process_start_time
from batchctl.runtime.testdir import copy_test_dir
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore

WAIT_SLICE_S = 0.1


@dataclass(frozen=True)
class ExecutorSettings:
    kill_grace_s: float
    heartbeat_s: float


def run_environment(batch: Batch, entry: Entry, run: Run, base: dict[str, str]) -> dict[str, str]:
    return {
        **base,
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
    run_dir = runs.run_dir(run.id)
    work = run_dir / "work"
    Path(run.artifacts_path).mkdir(parents=True, exist_ok=True)
    entrypoint = ENTRYPOINTS[this_os()]
    try:
        copy_test_dir(Path(entry.abs_dir), work)
    except OSError as exc:
        return runs.finish(
            run.id,
            RunStatus.ERROR,
            now=clock.now(),
            error_code="upload_failed",
            message=f"cannot copy {entry.abs_dir}: {exc}",
        )
    script = work / entrypoint
    if not script.is_file():
        return runs.finish(
            run.id,
            RunStatus.ERROR,
            now=clock.now(),
            error_code="entrypoint_missing",
            message=f"{entrypoint} not found in {entry.abs_dir}",
        )
    argv = [str(script)] if os.access(script, os.X_OK) else ["/bin/sh", str(script)]
    env = run_environment(batch, entry, run, dict(os.environ))
    with open(run.log_path, "ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return runs.finish(
                run.id,
                RunStatus.ERROR,
                now=clock.now(),
                error_code="start_failed",
                message=f"cannot start {entrypoint}: {exc}",
            )
    pgid = process.pid
    runs.update(run.id, lambda current: current.model_copy(update={"pgid": pgid}))

    deadline = clock.monotonic() + entry.timeout_s
    next_heartbeat = clock.monotonic() + settings.heartbeat_s
    outcome: RunStatus | None = None
    while process.poll() is None:
        if stop.requested:
            outcome = RunStatus.INTERRUPTED
            break
        if clock.monotonic() >= deadline:
            outcome = RunStatus.TIMEOUT
            break
        if clock.monotonic() >= next_heartbeat:
            next_heartbeat = clock.monotonic() + settings.heartbeat_s
            runs.update(run.id, _heartbeat(clock.now()))
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=WAIT_SLICE_S)

    # Whatever the entrypoint left behind in its group goes with it.
    if outcome is not None or group_alive(pgid):
        kill_group(pgid, grace_s=settings.kill_grace_s, clock=clock, reap=process)
    process.wait()
    now = clock.now()
    if outcome is RunStatus.TIMEOUT:
        return runs.finish(
            run.id, RunStatus.TIMEOUT, now=now, message=f"timed out after {entry.timeout_s}s"
        )
    if outcome is RunStatus.INTERRUPTED:
        return runs.finish(run.id, RunStatus.INTERRUPTED, now=now, message="cancelled")
    code = process.returncode
    if code == 0:
        return runs.finish(run.id, RunStatus.SUCCEEDED, now=now, exit_code=0)
    if code < 0:
        return runs.finish(
            run.id,
            RunStatus.FAILED,
            now=now,
            exit_code=128 - code,
            message=f"killed by signal {-code}",
        )
    return runs.finish(run.id, RunStatus.FAILED, now=now, exit_code=code)
