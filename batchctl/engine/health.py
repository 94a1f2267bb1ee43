"""Keeping machines healthy from a worker: counting run ends against their
machines, and running the health checks of quarantined machines.

Any worker may run any machine's check: whoever finds it due claims it in
``health.json`` (so one worker runs it, not all), starts it without waiting
for it, and looks at it again on its next ticks. A worker that dies with a
check running leaves it to another once the claim runs out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from batchctl.model.errors import StateError
from batchctl.model.fleet import Fleet
from batchctl.model.health import DEFAULT_CHECK, EndedRun, Quarantine, needs_probe
from batchctl.model.models import Run
from batchctl.state.health import HealthStore
from batchctl.transports.health import health_check_argv

# How much of a failed check's output is kept as its reason.
DETAIL_CHARS = 200


@dataclass
class _Check:
    process: subprocess.Popen[bytes] | None
    deadline: datetime
    log_path: Path
    # Known at once: a simulated machine passes, a check that cannot start fails.
    result: tuple[bool, str] | None = None


def ended_run(run: Run) -> EndedRun:
    return EndedRun(
        machine=run.machine,
        batch=run.batch_id,
        item=run.item,
        run=run.id,
        status=run.status.value,
        error_code=run.error_code,
        at=run.ended_at or run.created_at,
    )


class HealthKeeper:
    def __init__(self, store: HealthStore, fleet: Fleet, *, state_dir: Path, by: str) -> None:
        self.store = store
        self.fleet = fleet
        self.state_dir = state_dir
        self.by = by
        self._checks: dict[str, _Check] = {}
        # Connectivity probes of machines a run could not reach, by machine.
        self._probes: dict[str, _Check] = {}
        self._last_quarantined: Mapping[str, Quarantine] = {}
        # What happened to machines' health here, for the worker's log.
        self.events: list[str] = []

    def quarantined(self) -> Mapping[str, Quarantine]:
        """The quarantined machines; a damaged or newer health file must not
        stop every batch's dispatch, so the last answer read is kept."""
        with contextlib.suppress(StateError):
            self._last_quarantined = self.store.quarantined()
        return self._last_quarantined

    def probing(self) -> set[str]:
        """Machines this worker is probing: it gives them no run until the
        probe has answered (at most ``check_timeout``)."""
        return set(self._probes)

    def observe(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Count runs that just ended against their machines; the machines
        quarantined now. O(runs), no write unless something changed."""
        ends = [ended_run(run) for run in runs if self.fleet.get(run.machine) is not None]
        if not ends:
            return []
        try:
            taken = self.store.record_ends(ends, self.fleet, now)
        except StateError:
            return []  # counted by the next end; a busy lock must not stop dispatch
        self.events.extend(f"quarantined {name}" for name in taken)
        for end in ends:
            if (
                needs_probe(end.status, end.error_code)
                and end.machine not in taken
                and end.machine not in self._probes
                and end.machine not in self.quarantined()
            ):
                self._start(end.machine, now, DEFAULT_CHECK, self._probes, "probe")
        return taken

    def tend(self, now: datetime) -> list[str]:
        """Look at the checks this worker runs, record those that ended, and
        start those that are due. Never waits for a check. Returns the
        machines that came back. O(quarantined machines)."""
        for name in list(self._probes):
            probed = self._outcome(self._probes[name], now)
            if probed is None:
                continue
            del self._probes[name]
            if not probed[0]:
                with contextlib.suppress(StateError):
                    if self.store.probe_failed(name, detail=probed[1], fleet=self.fleet, now=now):
                        self.events.append(f"quarantined {name}: probe failed ({probed[1]})")
        back: list[str] = []
        for name in list(self._checks):
            outcome = self._outcome(self._checks[name], now)
            if outcome is None:
                continue
            passed, detail = outcome
            del self._checks[name]
            with contextlib.suppress(StateError):
                recorded = self.store.checked(
                    name, by=self.by, passed=passed, detail=detail, fleet=self.fleet, now=now
                )
                if recorded and passed:
                    back.append(name)
                    self.events.append(f"{name} passed its health check; back in service")
        for name, quarantine in self.quarantined().items():
            if name in self._checks or quarantine.next_check_at > now:
                continue
            machine = self.fleet.get(name)
            if machine is None:
                continue
            try:
                claimed = self.store.claim_check(
                    name, by=self.by, now=now, hold_s=self.fleet.health.check_timeout + 30
                )
            except StateError:
                continue
            if claimed is not None:
                machine_check = self.fleet.health_check_of(machine)
                self._start(name, now, machine_check, self._checks, "check")
        return back

    def close(self) -> None:
        """Stop the checks this worker runs (it is leaving); their claims run out."""
        for check in [*self._checks.values(), *self._probes.values()]:
            if check.process is not None and check.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(check.process.pid, signal.SIGKILL)
                check.process.wait()
        self._checks.clear()
        self._probes.clear()

    def _start(
        self, name: str, now: datetime, command: str, into: dict[str, _Check], kind: str
    ) -> None:
        machine = self.fleet.get(name)
        assert machine is not None
        known_hosts = self.state_dir / "ssh" / "known_hosts"
        argv = health_check_argv(machine, command, known_hosts=known_hosts)
        log_dir = self.state_dir / "health"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.{kind}.log" if kind != "check" else log_dir / f"{name}.log"
        deadline = now + timedelta(seconds=self.fleet.health.check_timeout)
        if argv is None:
            into[name] = _Check(None, deadline, log_path, (True, "simulated machine"))
            return
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a timed-out check is killed whole
                )
            except OSError as exc:
                failed = (False, f"the health check could not start: {exc.strerror or exc}")
                into[name] = _Check(None, deadline, log_path, failed)
                return
        into[name] = _Check(process, deadline, log_path)

    def _outcome(self, check: _Check, now: datetime) -> tuple[bool, str] | None:
        """(passed, what it said) once the check ended, else None."""
        if check.process is None:
            return check.result
        code = check.process.poll()
        if code is None:
            if now < check.deadline:
                return None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(check.process.pid, signal.SIGKILL)
            check.process.wait()
            return False, f"health check timed out after {self.fleet.health.check_timeout}s"
        if code == 0:
            return True, "health check passed"
        said = _last_line(check.log_path)
        return False, f"health check exited {code}" + (f": {said}" if said else "")


def _last_line(path: Path) -> str:
    try:
        text = path.read_bytes()[-4096:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:DETAIL_CHARS] if lines else ""
