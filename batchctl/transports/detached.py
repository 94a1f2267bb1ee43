"""The transport behind both ``local`` and ``ssh`` machines: each run gets a
detached executor process on this host (``batchctl _run-executor``) that
outlives whoever started it, so a killed worker or a finished ``batchctl
run`` loses no run. The executor runs the test here (local) or drives it
over ssh (runtime/runners)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from batchctl.model.clock import Clock
from batchctl.model.fleet import FleetSource
from batchctl.model.models import Run, RunStatus
from batchctl.state.runs import RunStore
from batchctl.transports.processes import (
    BeatWatch,
    group_alive,
    identity_alive,
    kill_group,
    processes_with_env,
    signal_process,
    spawn_detached,
)
from batchctl.transports.remote import RemoteLayout
from batchctl.transports.rundir import read_beat, read_pgid, read_result
from batchctl.transports.runners.ssh import kill_remote_run


def executor_argv(run_id: str, state_dir: Path, fleet: Path | None) -> list[str]:
    """The executor re-invokes this very batchctl, so it runs the same code."""
    argv = [sys.executable, "-m", "batchctl", "_run-executor", run_id]
    argv += ["--state-dir", str(state_dir)]
    return [*argv, "--fleet", str(fleet)] if fleet else argv


class DetachedTransport:
    def __init__(
        self,
        runs: RunStore,
        clock: Clock,
        *,
        kill_grace_s: float,
        fleet_path: Path | None = None,
        fleet: FleetSource | None = None,
        executor_stale_s: float = 60.0,
    ) -> None:
        self.fleet = fleet
        self.runs = runs
        self.clock = clock
        self.kill_grace_s = kill_grace_s
        self.fleet_path = fleet_path
        self.beats = BeatWatch(clock.monotonic, stale_s=executor_stale_s)

    def start(self, runs: Sequence[Run]) -> None:
        for run in runs:
            argv = executor_argv(run.id, self.runs.state_dir, self.fleet_path)
            spawn_detached(argv, self.runs.run_dir(run.id) / "executor.log")

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Executors record their runs' ends; here only lost ones are ended."""
        lost: list[str] = []
        for run in runs:
            lost_now = run.claimed and not run.status.terminal and not self.alive(run)
            if lost_now and self.terminate(run).status.terminal:
                lost.append(run.id)
        return lost

    def due_in(self, now: datetime) -> float | None:
        return None

    def wakeup_fds(self) -> list[int]:
        return []

    def alive(self, run: Run) -> bool:
        if run.supervisor is None or run.status.terminal:
            return False
        verdict = identity_alive(run.supervisor)
        if verdict is not None:
            return verdict
        # Another host's (or namespace's) executor: alive while its heartbeat
        # counter is seen to move, on our own monotonic clock.
        return self.beats.advancing(run.id, read_beat(self.runs.run_dir(run.id)))

    def terminate(self, run: Run) -> Run:
        now = self.clock.now()
        fresh = self.runs.update(
            run.id,
            lambda current: (
                None
                if current.claimed
                else _ended(current, RunStatus.INTERRUPTED, now, "cancelled before it started")
            ),
        )
        if fresh.status.terminal:
            return fresh
        if fresh.supervisor is None:
            # Claimed, but its executor died before saying who it is.
            return self._end_abandoned(fresh, now)
        verdict = identity_alive(fresh.supervisor)
        if verdict is None:
            return fresh  # not ours to signal: its own host's worker will
        if verdict and signal_process(fresh.supervisor, signal.SIGTERM):
            return fresh  # the executor stops the test and records the end
        return self._end_abandoned(fresh, now)

    def _end_abandoned(self, run: Run, now: datetime) -> Run:
        """A run whose executor is gone: its recorded outcome if it left one,
        else ``interrupted`` once what is left of it is confirmed dead."""
        run_dir = self.runs.run_dir(run.id)
        recorded = read_result(run_dir)
        if recorded is not None:
            # The executor wrote the outcome but died before recording it.
            return self.runs.finish(
                run.id,
                recorded.status,
                now=now,
                exit_code=recorded.exit_code,
                error_code=recorded.error_code,
                message=recorded.message,
            )
        problem = self._kill_leftovers(run, run_dir)
        if problem is not None:
            return self.runs.update(
                run.id, lambda current: current.model_copy(update={"message": problem})
            )
        return self.runs.finish(
            run.id, RunStatus.INTERRUPTED, now=now, message="its supervisor is gone"
        )

    def _kill_leftovers(self, run: Run, run_dir: Path) -> str | None:
        """Kill what a dead executor left running; None once confirmed, else
        why it could not be."""
        pgid = read_pgid(run_dir)
        if pgid is not None and group_alive(pgid):
            kill_group(pgid, grace_s=self.kill_grace_s, clock=self.clock)
        elif pgid is None:
            # The executor died between starting the test and recording its
            # group: find the test by the run id in its environment.
            for pid in processes_with_env("BATCHCTL_RUN_ID", run.id):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill_group(os.getpgid(pid), grace_s=self.kill_grace_s, clock=self.clock)
        machine = self.fleet.get().get(run.machine) if self.fleet else None
        if machine is not None and machine.transport == "ssh":
            # The remote tree outlives a dead executor: end it over a new connection.
            confirmed = kill_remote_run(
                machine,
                RemoteLayout.for_run(machine, run.id),
                known_hosts=self.runs.state_dir / "ssh" / "known_hosts",
                grace_s=self.kill_grace_s,
            )
            if not confirmed:
                return (
                    f"its executor is gone and {machine.name} did not confirm that the test "
                    "was stopped; the slot stays held until it does"
                )
        return None


def _ended(run: Run, status: RunStatus, now: datetime, message: str) -> Run:
    return run.model_copy(update={"status": status, "ended_at": now, "message": message})
