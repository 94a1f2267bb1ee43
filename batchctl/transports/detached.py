"""The transport behind both ``local`` and ``ssh`` machines: each run gets a
detached executor process on this host (``batchctl _run-executor``) that
outlives whoever started it, so a killed worker or a finished ``batchctl
run`` loses no run. The executor runs the test here (local) or drives it
over ssh (runtime/runners)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from batchctl.model.clock import Clock
from batchctl.model.fleet import FleetSource
from batchctl.model.models import Run, RunStatus
from batchctl.state.runs import RunStore
from batchctl.transports.processes import (
    group_alive,
    kill_group,
    pid_alive,
    processes_with_env,
    spawn_detached,
)
from batchctl.transports.remote import RemoteLayout
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
    ) -> None:
        self.fleet = fleet
        self.runs = runs
        self.clock = clock
        self.kill_grace_s = kill_grace_s
        self.fleet_path = fleet_path
        self.host = socket.gethostname()

    def start(self, run: Run) -> None:
        run_dir = self.runs.run_dir(run.id)
        argv = executor_argv(run.id, self.runs.state_dir, self.fleet_path)
        spawn_detached(argv, run_dir / "executor.log")

    def alive(self, run: Run) -> bool:
        if run.executor_pid is None or run.status.terminal:
            return False
        if run.executor_host != self.host:
            # Another host's executor cannot be probed from here; the caller
            # judges it by its heartbeat instead.
            return True
        return pid_alive(run.executor_pid, run.executor_started)

    def terminate(self, run: Run) -> None:
        if run.status.terminal:
            return
        if self.alive(run) and run.executor_pid is not None:
            try:
                os.kill(run.executor_pid, signal.SIGTERM)
                return
            except ProcessLookupError:
                pass
        if run.pgid is not None and group_alive(run.pgid):
            kill_group(run.pgid, grace_s=self.kill_grace_s, clock=self.clock)
        elif run.claimed and run.executor_host == self.host:
            # The executor died between starting the test and recording its
            # group: find the test by the run id in its environment.
            for pid in processes_with_env("BATCHCTL_RUN_ID", run.id):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill_group(os.getpgid(pid), grace_s=self.kill_grace_s, clock=self.clock)
        machine = self.fleet.get().get(run.machine) if self.fleet else None
        if run.claimed and machine is not None and machine.transport == "ssh":
            # The remote tree outlives a dead executor: end it over a new connection.
            kill_remote_run(
                machine,
                RemoteLayout.for_run(machine, run.id),
                known_hosts=self.runs.state_dir / "ssh" / "known_hosts",
                grace_s=self.kill_grace_s,
            )
        reason = "cancelled before it started" if not run.claimed else "its executor is gone"
        self.runs.finish(run.id, RunStatus.INTERRUPTED, now=self.clock.now(), message=reason)
