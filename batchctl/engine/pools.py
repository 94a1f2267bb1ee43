"""Elastic machines from a worker: provision while items wait for a pool's
tags, wait for a new machine's health check, deprovision once idle.

Every worker of every batch tends every pool, between its steps and without
waiting for a command: a provision, health check or deprovision runs as a
child process that is looked at again on the next tick. What to request is
decided in ``pools.json`` under its lock, against the machines already
alive or coming, so the demand of several batches shares one request; the
worker that made a request runs its command, and a worker that dies leaves
its machines to another once its claim runs out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from batchctl.engine.lease import LeaseJudge
from batchctl.model.errors import StateError
from batchctl.model.fleet import Fleet, pool_machine
from batchctl.model.health import DEFAULT_CHECK
from batchctl.model.pools import (
    CAPACITY_EXIT,
    Address,
    BadProvisionOutput,
    PoolSpec,
    parse_address,
    to_request,
)
from batchctl.state.batches import BatchStore
from batchctl.state.pools import PoolMachine, PoolState, PoolStore
from batchctl.state.runs import RunStore
from batchctl.transports.health import health_check_argv

# A new machine's health check is tried again this often until it passes
# (or the pool's ready_timeout runs out).
READY_CHECK_EVERY_S = 1.0
# How long one health check of a new machine may take.
READY_CHECK_TIMEOUT_S = 30.0
# A failed deprovision is run again after this long.
DEPROVISION_RETRY_S = 10.0
DETAIL_CHARS = 200


@dataclass
class _Job:
    kind: str  # provision | check | deprovision
    pool: str
    process: subprocess.Popen[bytes]
    deadline: datetime
    out: Path
    err: Path


class PoolKeeper:
    def __init__(
        self,
        store: PoolStore,
        fleet: Callable[[], Fleet],
        *,
        batches: BatchStore,
        runs: RunStore,
        judge: LeaseJudge,
        state_dir: Path,
        by: str,
        now: datetime,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.batches = batches
        self.runs = runs
        self.judge = judge
        self.state_dir = state_dir
        self.by = by
        self._jobs: dict[str, _Job] = {}
        self._not_before: dict[str, datetime] = {}
        self._busy_at: dict[str, datetime] = {}
        self._began = now
        # The pool machines of the fleet as loaded: the first tick that finds
        # another ready set has the caller reload its fleet.
        self._ready = fleet().pool_machine_names
        # Its worker is stopping: a machine it makes now goes again at once.
        self._leaving = False
        # What happened to pool machines here, for the worker's log.
        self.events: list[str] = []

    @property
    def pools(self) -> tuple[PoolSpec, ...]:
        return self.fleet().pools

    def tend(self, now: datetime) -> bool:
        """One look at every pool: record the commands that ended, request
        and deprovision machines, start what is due. True when the pool
        machines in the fleet changed (the caller reloads its fleet).
        O(pools x their machines + batches), no write unless a machine
        changes state."""
        if not self.pools:
            return False
        try:
            self._reap_jobs(now)
            pools = self.store.pools()
            demand = self._demand()
            held = self.runs.held()
            for spec in self.pools:
                state = pools.get(spec.name, PoolState())
                self._grow(spec, state, demand.get(spec.name, 0), now)
                self._tend_machines(spec, held, demand.get(spec.name, 0), now)
            pools = self.store.pools()
            ready = frozenset(
                name
                for spec in self.pools
                for name, machine in pools.get(spec.name, PoolState()).machines.items()
                if machine.state == "ready"
            )
        except StateError:
            return False  # a busy lock: next tick
        changed = ready != self._ready
        self._ready = ready
        return changed

    def alive(self) -> int:
        """Machines of this fleet's pools not yet deprovisioned, beyond their ``min``."""
        with contextlib.suppress(StateError):
            pools = self.store.pools()
            return sum(
                max(0, len(pools.get(spec.name, PoolState()).machines) - spec.min)
                for spec in self.pools
            )
        return 0

    def busy(self) -> bool:
        """Whether a command this worker started is still under way."""
        return bool(self._jobs)

    def leave(self, now: datetime) -> None:
        """The worker stops (SIGTERM) with no other live worker to tend the
        pools: take out and deprovision the machines it would leave running
        for nobody, down to each pool's ``min``: those starting under its
        claim, then the ready ones holding no run (idle or not for long: no
        one will be there to see them idle). Its health checks are stopped;
        a provision it runs is deprovisioned once it ends with an address.
        Then ``wind_down`` each tick. O(pool machines)."""
        self._leaving = True
        for name, job in list(self._jobs.items()):
            if job.kind == "check":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait()
                del self._jobs[name]
        try:
            pools = self.store.pools()
            held = self.runs.held()
            for spec in self.pools:
                state = pools.get(spec.name, PoolState())
                up = state.count("starting", "ready")
                order = sorted(
                    state.machines.values(), key=lambda m: (m.state != "starting", m.name)
                )
                for machine in order:
                    if up <= spec.min:
                        break
                    mine = machine.state == "starting" and machine.by == self.by
                    idle = machine.state == "ready" and held.get(machine.name, 0) == 0
                    if machine.name in self._jobs or not (mine or idle):
                        continue
                    if self._take_out(spec, machine.name, now, "its worker stopped"):
                        up -= 1
                        self._deprovision_taken(spec, machine.name, now)
        except StateError:
            pass  # a busy lock: what is left waits for the next worker

    def wind_down(self, now: datetime) -> bool:
        """After ``leave``: record the commands that ended; True while one
        is still under way."""
        with contextlib.suppress(StateError):
            self._reap_jobs(now)
        return self.busy()

    def _deprovision_taken(self, spec: PoolSpec, name: str, now: datetime) -> None:
        taken_out = self.store.pools()[spec.name].machines.get(name)
        if taken_out is not None:
            self._deprovision(spec, taken_out, now)

    def close(self) -> None:
        """The worker leaves: its commands are let run (a provision or a
        deprovision cut short would leak a machine); their claims run out
        and another worker takes the machines over."""
        self._jobs.clear()

    # -- demand and requests -------------------------------------------------

    def _demand(self) -> dict[str, int]:
        """Waiting items per pool, of every live batch: what each batch
        published at its last step (items no free machine took)."""
        demand: dict[str, int] = {}
        for batch_id, lease, cancelled, wanted, _ in self.batches.demands():
            if cancelled or not wanted or not self.judge.live(batch_id, lease):
                continue
            for selector, count in wanted.items():
                for spec in self.pools:
                    if spec.serves(selector):
                        demand[spec.name] = demand.get(spec.name, 0) + count
                        break
        return demand

    def _grow(self, spec: PoolSpec, state: PoolState, demand: int, now: datetime) -> None:
        # Asked first of the file as last read, without the lock: most ticks
        # request nothing.
        wanted = to_request(
            demand=demand,
            slots=spec.slots,
            coming=state.count("provisioning", "starting"),
            alive=len(state.machines),
            minimum=spec.min,
            maximum=spec.max,
        )
        if wanted == 0 or (state.retry_at is not None and state.retry_at > now):
            return
        names = self.store.request(
            spec, demand=demand, by=self.by, now=now, hold_s=self._hold_s(spec)
        )
        for name in names:
            self.events.append(f"provisioning {name} ({demand} items waiting for pool {spec.name})")
            self._provision(spec, name, now)

    @staticmethod
    def _hold_s(spec: PoolSpec) -> float:
        return float(spec.ready_timeout + READY_CHECK_TIMEOUT_S + 60)

    # -- each machine ----------------------------------------------------------

    def _tend_machines(
        self, spec: PoolSpec, held: Mapping[str, int], demand: int, now: datetime
    ) -> None:
        state = self.store.pools().get(spec.name, PoolState())
        ready = state.count("ready")
        for name, machine in sorted(state.machines.items()):
            if name in self._jobs or self._not_before.get(name, now) > now:
                continue
            if machine.by not in (None, self.by):
                if machine.until is None or machine.until > now:
                    continue  # another worker's, and it is alive
                taken = self.store.take_over(
                    spec.name, name, by=self.by, now=now, hold_s=self._hold_s(spec)
                )
                if taken is None:
                    continue
                machine = taken
                if machine.state == "provisioning":
                    self._provision_orphaned(spec, machine, now)
                    continue
            if machine.state == "starting":
                self._start_or_give_up(spec, machine, now)
            elif machine.state == "deprovisioning":
                self._deprovision(spec, machine, now)
            elif machine.state == "ready":
                if held.get(name, 0) > 0:
                    self._busy_at[name] = now
                    continue
                idle_since = max(
                    machine.ready_at or machine.since, self._busy_at.get(name, self._began)
                )
                if (
                    demand == 0
                    and ready > spec.min
                    and now - idle_since >= timedelta(seconds=spec.idle_timeout)
                    and self._take_out(spec, name, now, f"idle for {spec.idle_timeout}s")
                ):
                    ready -= 1
                    self._deprovision_named(spec, name, now)

    def _provision_orphaned(self, spec: PoolSpec, machine: PoolMachine, now: datetime) -> None:
        """Its worker died with the provision command (its claim ran out,
        past the command's own deadline). If the command got as far as
        printing where the machine is, the machine is deprovisioned, not
        leaked; else it is forgotten, and said so."""
        out = self.state_dir / "pools" / f"{machine.name}.provision.out"
        try:
            address = parse_address(out.read_text(errors="replace"))
        except (BadProvisionOutput, OSError):
            self.store.provision_failed(
                spec,
                machine.name,
                capacity=False,
                note="the worker provisioning it stopped; if it was made, it is not known",
                now=now,
            )
            return
        note = "the worker provisioning it stopped"
        if self._give_up(spec, machine.name, now, note, address=address):
            self.events.append(f"{machine.name}: {note} after it was made; deprovisioning it")

    def _give_up(
        self,
        spec: PoolSpec,
        name: str,
        now: datetime,
        note: str,
        *,
        address: Address | None = None,
    ) -> bool:
        """Counted as failed and deprovisioned now; False if another worker
        had already moved it on."""
        if not self.store.deprovisioning(
            spec.name,
            name,
            by=self.by,
            now=now,
            hold_s=self._hold_s(spec),
            note=note,
            failed=True,
            address=address,
        ):
            return False
        self._deprovision_named(spec, name, now)
        return True

    def _deprovision_named(self, spec: PoolSpec, name: str, now: datetime) -> None:
        """Deprovision a machine just marked so, as the pool file has it."""
        gone = self.store.pools()[spec.name].machines.get(name)
        if gone is not None:
            self._deprovision(spec, gone, now)

    def _take_out(self, spec: PoolSpec, name: str, now: datetime, note: str) -> bool:
        """Out of the fleet for every batch, only if it holds no run: decided
        under the batches lock, which every dispatch holds."""
        with self.batches.dispatch_paused():
            if self.runs.held().get(name, 0) > 0:
                return False
            return self.store.deprovisioning(
                spec.name, name, by=self.by, now=now, hold_s=self._hold_s(spec), note=note
            )

    def _start_or_give_up(self, spec: PoolSpec, machine: PoolMachine, now: datetime) -> None:
        if now - machine.since >= timedelta(seconds=spec.ready_timeout):
            self._give_up(
                spec, machine.name, now, f"never became healthy within {spec.ready_timeout}s"
            )
            return
        assert machine.address is not None
        target = pool_machine(spec, machine.name, machine.address)
        argv = health_check_argv(
            target,
            spec.health_check or DEFAULT_CHECK,
            known_hosts=self.state_dir / "ssh" / "known_hosts",
        )
        assert argv is not None
        (self.state_dir / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spawn(
            machine.name, "check", spec, argv, now + timedelta(seconds=READY_CHECK_TIMEOUT_S)
        )

    # -- commands ----------------------------------------------------------------

    def _provision(self, spec: PoolSpec, name: str, now: datetime) -> None:
        env = {"BATCHCTL_POOL": spec.name, "BATCHCTL_MACHINE": name}
        self._spawn(
            name,
            "provision",
            spec,
            ["sh", "-c", spec.provision],
            now + timedelta(seconds=spec.ready_timeout),
            env=env,
        )

    def _deprovision(self, spec: PoolSpec, machine: PoolMachine, now: datetime) -> None:
        address = machine.address
        env = {
            "BATCHCTL_POOL": spec.name,
            "BATCHCTL_MACHINE": machine.name,
            "BATCHCTL_MACHINE_HOST": address.host if address else "",
            "BATCHCTL_MACHINE_PORT": str(address.port or "") if address else "",
            "BATCHCTL_MACHINE_ID": (address.id or "") if address else "",
        }
        stdin = address.as_json() + "\n" if address else ""
        self._spawn(
            machine.name,
            "deprovision",
            spec,
            ["sh", "-c", spec.deprovision],
            now + timedelta(seconds=spec.ready_timeout),
            env=env,
            stdin=stdin,
        )

    def _spawn(
        self,
        name: str,
        kind: str,
        spec: PoolSpec,
        argv: list[str],
        deadline: datetime,
        *,
        env: Mapping[str, str] | None = None,
        stdin: str = "",
    ) -> None:
        folder = self.state_dir / "pools"
        folder.mkdir(parents=True, exist_ok=True)
        out, err = folder / f"{name}.{kind}.out", folder / f"{name}.{kind}.err"
        source = self.fleet().source
        cwd = Path(source).parent if Path(source).is_file() else None
        stdin_path = folder / f"{name}.{kind}.in"
        stdin_path.write_text(stdin)
        with (
            open(out, "wb") as out_file,
            open(err, "wb") as err_file,
            open(stdin_path, "rb") as in_file,
        ):
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=in_file,
                    stdout=out_file,
                    stderr=err_file,
                    cwd=cwd,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )
            except OSError as exc:
                err_file.write(f"cannot start: {exc}\n".encode())
                process = subprocess.Popen(["sh", "-c", "exit 127"])
        self._jobs[name] = _Job(kind, spec.name, process, deadline, out, err)

    def _reap_jobs(self, now: datetime) -> None:
        for name, job in list(self._jobs.items()):
            code = job.process.poll()
            if code is None:
                if now < job.deadline:
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                code = job.process.wait()
                timed_out = True
            else:
                timed_out = False
            del self._jobs[name]
            spec = next((p for p in self.pools if p.name == job.pool), None)
            if spec is None:
                continue
            said = _last_line(job.err) or _last_line(job.out)
            if job.kind == "provision":
                self._provision_ended(spec, name, code, timed_out, job, said, now)
            elif job.kind == "check":
                if code == 0 and not timed_out:
                    if self.store.ready(spec.name, name, now=now):
                        self.events.append(f"{name} is ready")
                else:
                    self._not_before[name] = now + timedelta(seconds=READY_CHECK_EVERY_S)
            elif code == 0 and not timed_out:
                self.store.deprovisioned(spec.name, name)
                self.events.append(f"{name} deprovisioned")
            else:
                self._not_before[name] = now + timedelta(seconds=DEPROVISION_RETRY_S)

    def _provision_ended(
        self,
        spec: PoolSpec,
        name: str,
        code: int,
        timed_out: bool,
        job: _Job,
        said: str,
        now: datetime,
    ) -> None:
        self.events.append(f"provision of {name} exited {code}")
        if timed_out:
            note = f"provision did not end within {spec.ready_timeout}s"
        elif code == CAPACITY_EXIT:
            self.store.provision_failed(
                spec, name, capacity=True, note=f"no capacity: {said}".rstrip(": "), now=now
            )
            return
        elif code != 0:
            note = f"provision exited {code}" + (f": {said}" if said else "")
        else:
            try:
                address = parse_address(job.out.read_text(errors="replace"))
            except (BadProvisionOutput, OSError) as exc:
                note = f"provision output: {exc}"
            else:
                if not self.store.provisioned(spec.name, name, address, now=now):
                    self.events.append(f"{name} was given up while it was provisioned")
                elif self._leaving and self._take_out(spec, name, now, "its worker stopped"):
                    self._deprovision_taken(spec, name, now)
                return
        self.store.provision_failed(spec, name, capacity=False, note=note, now=now)


def _last_line(path: Path) -> str:
    try:
        text = path.read_bytes()[-4096:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:DETAIL_CHARS] if lines else ""
