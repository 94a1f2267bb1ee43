"""Runs on this host, supervised by the worker itself (``transport: local``).

A run costs one small POSIX shell and the test: no interpreter starts per
run. The worker copies the test directory, then starts ``/bin/sh`` with the
wrapper below in a session of its own (its pid is the test's process group).
The wrapper claims the run, runs the entrypoint with its output going to the
run's log, and writes the exit status to ``exit`` in the run directory.

- **Claiming is exclusive**: the wrapper creates ``claim`` with the shell's
  noclobber (``set -C``: an ``O_EXCL`` open), which fails if the name
  exists; of two wrappers started for one run (a worker that died before
  seeing its start, then its successor), one runs it. Stopping a run nobody
  claimed takes the claim first (a hard link, as exclusive), so it never
  starts. The wrapper runs no other program than the test: every external
  command it ran would cost a process per run.
- **Small files are written whole**: ``claim`` and ``exit`` are each one
  short ``write``; read empty, they mean "not yet".
- **Nothing is lost with the worker**: the wrapper outlives it (own session),
  and the ``exit`` file says how the test ended to whichever worker looks
  next. A wrapper that died without writing it ends the run ``interrupted``
  once what is left of its process group is gone.
- **Ends are noticed at once**: the wrapper is the worker's child; its pidfd
  wakes the worker the moment it exits (``wakeup_fds``).
- **Stopping never blocks a tick**: timeout and cancel send TERM to the
  group and come back; KILL follows after the grace, and the run is recorded
  once the group is confirmed gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchctl.model.clock import Clock
from batchctl.model.environment import local_environment
from batchctl.model.fleet import FleetSource
from batchctl.model.models import ProcessIdentity, Run, RunStatus
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.inputs import artifacts_of_passing_run
from batchctl.transports.processes import (
    group_alive,
    group_of_run,
    identity_alive,
    identity_of,
)
from batchctl.transports.rundir import write_atomically
from batchctl.transports.runners.base import Ended, batchctl_variables, ending, from_exit_code
from batchctl.transports.umask import test_umask
from batchctl.transports.workcopy import (
    NotStarted,
    entrypoint_in,
    inputs_given,
    record_end,
    work_copy,
)

# $1 run directory, $2 the entrypoint's path; the rest is its argv. The
# shell exports OLDPWD once it has changed directory: unset, so that a local
# test's environment is exactly the one a remote test gets (environment.py).
# Started with batchctl's umask (077: its files are private); the test runs
# with the user's ($2), and its output goes to the log batchctl made for it.
WRAPPER = r"""
run_dir=$1; test_umask=$2; shift 2
set -C
echo $$ > "$run_dir/claim" || exit 0
set +C
cd "$run_dir/work" || exit 125
unset OLDPWD
umask "$test_umask"
"$@" </dev/null >>"$run_dir/output.log" 2>&1
code=$?
umask 077
echo $code > "$run_dir/exit"
"""
VOID = "void"  # the claim of a run stopped before anyone started it


@dataclass
class _Stopping:
    status: RunStatus
    message: str
    kill_at: datetime
    killed: bool = False
    lost: bool = False  # stopping what a dead wrapper left behind


class EntryLookup:
    """A run's entry (env, timeout) and batch facts, read once per batch."""

    def __init__(self, batch_raw: Callable[[str], Mapping[str, Any]]) -> None:
        self.batch_raw = batch_raw
        self._batches: dict[str, tuple[str, dict[str, Mapping[str, Any]]]] = {}

    def __call__(self, run: Run) -> tuple[str, Mapping[str, Any]]:
        """(staging, raw entry) of the run's item."""
        if run.batch_id not in self._batches:
            raw = self.batch_raw(run.batch_id)
            entries = {entry["name"]: entry for entry in raw["entries"]}
            self._batches[run.batch_id] = (raw.get("staging", ""), entries)
        staging, entries = self._batches[run.batch_id]
        return staging, entries[run.item]


class LocalTransport:
    def __init__(
        self,
        runs: RunStore,
        clock: Clock,
        *,
        entries: EntryLookup,
        fleet: FleetSource,
        kill_grace_s: float,
        environ: Mapping[str, str] | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.runs = runs
        self.clock = clock
        self.entries = entries
        self.fleet = fleet
        self.kill_grace_s = kill_grace_s
        self.environ = dict(os.environ if environ is None else environ)
        self.snapshots = snapshots
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[str, int] = {}
        # Runs whose exited wrapper has woken the worker once already.
        self._woke: set[str] = set()
        self._stopping: dict[str, _Stopping] = {}

    # -- starting ------------------------------------------------------------

    def start(self, runs: Sequence[Run]) -> None:
        for run in runs:
            self._launch(run)

    def _launch(self, run: Run) -> None:
        run_dir = self.runs.run_dir(run.id)
        if (run_dir / "claim").exists():
            return  # someone runs it already
        staging, entry = self.entries(run)
        fleet = self.fleet.get()
        machine = fleet.get(run.machine)
        entrypoint = machine.entrypoint if machine else "run.sh"
        try:
            work = work_copy(
                run_dir,
                test_dir=run.test_dir,
                snapshot=entry.get("snapshot"),
                snapshots=self.snapshots,
            )
            script = entrypoint_in(work, entrypoint, run.test_dir)
            given = inputs_given(
                run_dir, entry.get("inputs", ()), lambda item: self._artifacts_of(run, item)
            )
        except NotStarted as problem:
            self._record(run, problem.ended)
            return
        argv = [str(script)] if os.access(script, os.X_OK) else ["/bin/sh", str(script)]
        Path(run.artifacts_path).mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made here, private, so the wrapper's redirect only appends to it.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(run_dir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        env = local_environment(
            controller=self.environ,
            env_pass=fleet.env_pass_for(machine, entry.get("env_pass", ())),
            entry_env=entry.get("env", {}),
            batchctl={**batchctl_variables(run, staging), **given},
        )
        try:
            child = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "batchctl-run", str(run_dir), test_umask(), *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            self._record(
                run,
                Ended(
                    RunStatus.ERROR,
                    error_code="start_failed",
                    message=f"cannot start {entrypoint}: {exc}",
                ),
            )
            return
        self._children[run.id] = child
        with contextlib.suppress(OSError, AttributeError):
            self._pidfds[run.id] = os.pidfd_open(child.pid)

    def _artifacts_of(self, run: Run, item: str) -> Path | None:
        """The artifacts of the passing run of ``item`` in the run's batch
        (read fresh: it passed after this batch was first looked at)."""
        return artifacts_of_passing_run(self.runs, self.entries.batch_raw(run.batch_id), item)

    def wakeup_fds(self) -> list[int]:
        """Readable as soon as a watched wrapper exits: the worker's own
        children and the wrappers it adopted. A pidfd stays readable once its
        process is gone, so each one wakes the worker once after its exit
        (the step that follows sees the end) and is then let go, whether or
        not a check looked at its run again (a run stopped, or ended by
        another process): a worker never spins on an exited wrapper."""
        exited = _readable(list(self._pidfds.values()))
        for run_id, fd in list(self._pidfds.items()):
            if fd not in exited:
                continue
            if run_id in self._woke:
                self._unwatch(run_id)
            else:
                self._woke.add(run_id)
        return list(self._pidfds.values())

    def _unwatch(self, run_id: str) -> None:
        self._woke.discard(run_id)
        child = self._children.pop(run_id, None)
        if child is not None:
            child.poll()  # reaped: it has exited
        fd = self._pidfds.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def due_in(self, now: datetime) -> float | None:
        """A stop waiting for its KILL, or a timeout, is the next thing due."""
        moments = [stop.kill_at for stop in self._stopping.values()]
        return max(0.0, (min(moments) - now).total_seconds()) if moments else None

    # -- looking at runs -----------------------------------------------------

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Record what happened to runs in flight, in one write: claimed,
        ended (their exit file), lost (wrapper gone without one), timed out
        (stopped here). Returns the ids of runs found lost. Reads the files
        of the runs that may have changed only (see ``_running_quietly``):
        a step costs what ended, not every run in flight."""
        self._reap_children()
        changes: dict[str, Callable[[Run], Run | None]] = {}
        lost: list[str] = []
        exited = _readable(list(self._pidfds.values()))
        for run in runs:
            if run.status.terminal:
                self._forget(run.id)
                continue
            if self._running_quietly(run, now, exited):
                continue
            change = self._look(run, now, lost)
            if change is not None:
                changes[run.id] = change
        if changes:
            self.runs.update_many(changes)
        return lost

    def _running_quietly(self, run: Run, now: datetime, exited: set[int]) -> bool:
        """A claimed run whose wrapper this process watches and has not seen
        exit, with no stop under way and no timeout due: nothing of it can
        have changed (its end comes with its wrapper's exit, which wakes the
        worker), so its files need not be read."""
        fd = self._pidfds.get(run.id)
        if (
            fd is None
            or fd in exited
            or run.status is not RunStatus.RUNNING
            or run.started_at is None
            or run.id in self._stopping
        ):
            return False
        timeout_s = self.entries(run)[1].get("timeout_s")
        return timeout_s is None or now - run.started_at < timedelta(seconds=timeout_s)

    def _look(self, run: Run, now: datetime, lost: list[str]) -> Callable[[Run], Run | None] | None:
        run_dir = self.runs.run_dir(run.id)
        stopping = self._stopping.get(run.id)
        if stopping is not None:
            change = self._continue_stop(run, run_dir, stopping, now)
            if change is not None and stopping.lost:
                lost.append(run.id)
            return change
        claim = _read(run_dir / "claim")
        if claim is None and _left_empty(run_dir / "claim", now):
            # Its wrapper created the claim and died, or could not write its
            # pid (a full disk), before it ran anything: nobody runs it.
            lost.append(run.id)
            return ending(
                Ended(RunStatus.INTERRUPTED, message="its wrapper died while claiming it"), now
            )
        if claim is None or claim == VOID:
            return None  # not started yet (the scheduler relaunches after its grace)
        pgid = int(claim)
        supervisor = run.supervisor or identity_of(pgid)
        alive = supervisor is not None and identity_alive(supervisor) is not False
        # Read after the liveness check: the wrapper writes its exit status
        # before it exits, so a dead wrapper without one died early.
        exit_text = _read(run_dir / "exit")
        if exit_text is not None:
            self._drop_adopted(run.id)
            if group_of_run(pgid, run.id):
                # Whatever the entrypoint left behind in its group goes with it.
                self._signal_group(pgid, signal.SIGKILL)
            return ending(
                _ended_from(exit_text),
                _mtime(run_dir / "exit") or now,
                started_at=_mtime(run_dir / "claim"),
            )
        if not alive:
            self._drop_adopted(run.id)
            if group_of_run(pgid, run.id):
                self._begin_stop(run, pgid, RunStatus.INTERRUPTED, "its supervisor is gone", now)
                self._stopping[run.id].lost = True
                return None
            lost.append(run.id)
            return ending(Ended(RunStatus.INTERRUPTED, message="its supervisor is gone"), now)
        if supervisor is not None and run.id not in self._pidfds:
            self._adopt(run.id, supervisor)
        timeout_s = self.entries(run)[1].get("timeout_s")
        started_at = run.started_at or _mtime(run_dir / "claim") or now
        if timeout_s is not None and now - started_at >= timedelta(seconds=timeout_s):
            self._begin_stop(
                run, int(claim), RunStatus.TIMEOUT, f"timed out after {timeout_s}s", now
            )
            return None
        if run.status is RunStatus.PENDING:
            return lambda current: (
                current.model_copy(
                    update={
                        "status": RunStatus.RUNNING,
                        "started_at": started_at,
                        "supervisor": supervisor,
                    }
                )
                if not current.claimed
                else None
            )
        return None

    def _record(self, run: Run, ended: Ended) -> None:
        """A run that could not start: it ends here, with why."""
        record_end(self.runs, run.id, ended, self.clock.now())

    def _adopt(self, run_id: str, wrapper: ProcessIdentity) -> None:
        """Be woken by the end of a live wrapper another process started (the
        command that made the batch, an earlier worker): its pidfd turns
        readable when it exits, whoever its parent is. Opened right after
        its identity was seen alive; should the pid be reused in between,
        the cost is one early step."""
        if identity_alive(wrapper) is not True:
            return  # not one this host can watch (another boot or pid namespace)
        with contextlib.suppress(OSError, AttributeError):
            self._pidfds[run_id] = os.pidfd_open(wrapper.pid)

    def _drop_adopted(self, run_id: str) -> None:
        """An adopted wrapper's pidfd stays readable once it has exited: close
        it when its end is seen (a child's is closed when it is reaped)."""
        if run_id not in self._children:
            self._unwatch(run_id)

    def _reap_children(self) -> None:
        for run_id, child in list(self._children.items()):
            if child.poll() is not None:
                self._unwatch(run_id)

    def _forget(self, run_id: str) -> None:
        self._stopping.pop(run_id, None)
        self._unwatch(run_id)

    # -- stopping ------------------------------------------------------------

    def terminate(self, run: Run) -> Run:
        """Stop a run on fresh facts: void an unclaimed one (its wrapper, if
        one comes, then finds the claim taken), or TERM the group of a
        claimed one and record it once the group is gone."""
        now = self.clock.now()
        run_dir = self.runs.run_dir(run.id)
        if _take_claim(run_dir):
            return self.runs.finish(
                run.id, RunStatus.INTERRUPTED, now=now, message="cancelled before it started"
            )
        claim = _read(run_dir / "claim")
        if (
            claim is not None
            and claim != VOID
            and run.id not in self._stopping
            and _read(run_dir / "exit") is None
            and group_of_run(int(claim), run.id)
        ):
            self._begin_stop(run, int(claim), RunStatus.INTERRUPTED, "cancelled", now)
        self.check([run], now)  # records an end already written, or a lost wrapper
        return self.runs.get(run.id)

    def _begin_stop(
        self, run: Run, pgid: int, status: RunStatus, message: str, now: datetime
    ) -> None:
        self._stopping[run.id] = _Stopping(
            status, message, now + timedelta(seconds=self.kill_grace_s)
        )
        self._signal_group(pgid, signal.SIGTERM)  # the caller made sure the group is the run's

    def _continue_stop(
        self, run: Run, run_dir: Path, stopping: _Stopping, now: datetime
    ) -> Callable[[Run], Run | None] | None:
        claim = _read(run_dir / "claim")
        pgid = int(claim) if claim and claim != VOID else None
        if pgid is not None and group_of_run(pgid, run.id):
            if now >= stopping.kill_at and not stopping.killed:
                self._signal_group(pgid, signal.SIGKILL)
                stopping.killed = True
            return None
        del self._stopping[run.id]
        return ending(Ended(stopping.status, message=stopping.message), now)

    def _signal_group(self, pgid: int, sig: int) -> None:
        """Signal the group the wrapper made, while it has members: a process
        group id in use is never given to a new process, so a live group
        with that id is still the run's."""
        if not group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _take_claim(run_dir: Path) -> bool:
    """Claim an unstarted run for nobody (it will not run). False if a
    wrapper claimed it first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    void = run_dir / f"claim.void.{os.getpid()}"
    write_atomically(void, VOID.encode())
    try:
        os.link(void, run_dir / "claim")
        return True
    except FileExistsError:
        return False
    finally:
        void.unlink(missing_ok=True)


# A claim is created, then written, by one shell: empty for longer than
# this, its wrapper is gone.
EMPTY_CLAIM_GRACE_S = 10.0


def _left_empty(claim: Path, now: datetime) -> bool:
    """The claim exists, holds nothing, and has for EMPTY_CLAIM_GRACE_S."""
    try:
        status = claim.stat()
    except OSError:
        return False
    written = datetime.fromtimestamp(status.st_mtime, UTC)
    return status.st_size == 0 and (now - written).total_seconds() > EMPTY_CLAIM_GRACE_S


def _readable(fds: list[int]) -> set[int]:
    if not fds:
        return set()
    ready, _, _ = select.select(fds, [], [], 0)
    return set(ready)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    except OSError:
        return None


def _ended_from(exit_text: str) -> Ended:
    try:
        code = int(exit_text)
    except ValueError:
        return Ended(RunStatus.ERROR, error_code="exit_unreadable", message=exit_text[:200])
    if code > 128:
        ended = from_exit_code(code)
        return Ended(ended.status, exit_code=code, message=f"killed by signal {code - 128}")
    return from_exit_code(code)
