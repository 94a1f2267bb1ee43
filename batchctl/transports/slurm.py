"""Runs handed to a Slurm cluster (``transport: slurm``): each run is one
batch job, placed, started and ended by Slurm; batchctl submits, watches,
stops and collects.

- **A run lives in the shared directory**, ``<shared_dir>/<run-id>/``, which
  this host and the cluster's nodes both see: ``work/`` (the test's copy),
  ``inputs/``, ``artifacts/``, ``env`` (its variables, 0600, removed by the
  job once read), ``job.sh``, the job's ``output.log`` and the ``exit`` file
  the job script writes with the test's exit status.
- **Submitting is exclusive**: ``claim`` in the run's state directory is
  created with ``O_EXCL`` before ``sbatch``, and the job id is written beside
  it (``slurm_job``) once ``sbatch`` answers. Every job is named
  ``batchctl-<run-id>``: a worker that died between the two is succeeded by
  one that finds the job by its name and adopts it, so no run is submitted
  twice. The submitter touches the claim before each Slurm command and
  re-reads the run just before ``sbatch``, so a successor's grace counts
  from there and a run ended meanwhile is not submitted. Stopping a run
  nobody submitted takes the claim first.
- **One state read per tick**: all jobs in flight on a cluster are read by one
  ``squeue -t all -j IDS`` call (fast even with thousands of jobs; ``--json``
  ignores ``-j`` and ``sacct`` needs slurmdbd). The interval grows while
  nothing changes and drops back when something does.
- **batchctl keeps its own timeout**: Slurm's limits are whole minutes,
  enforced every half minute or so; batchctl cancels a run at its timeout,
  with ``--time`` (a minute over) as the backstop should no worker be looking.
- **Stopping is confirmed by Slurm**: ``scancel`` is sent, and the run is
  recorded once a later read shows the job ended.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchctl.model.clock import Clock
from batchctl.model.environment import BASE_VARIABLES, run_variables
from batchctl.model.fleet import FleetSource, Machine
from batchctl.model.models import Run, RunStatus
from batchctl.model.views import NodeView
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.archive import UnsafeArchive, safe_extract
from batchctl.transports.inputs import artifacts_of_passing_run
from batchctl.transports.local import EntryLookup
from batchctl.transports.remote import PosixCommands
from batchctl.transports.rundir import write_atomically
from batchctl.transports.runners.base import Ended, batchctl_variables, ending, from_exit_code
from batchctl.transports.workcopy import (
    NotStarted,
    entrypoint_in,
    inputs_given,
    record_end,
    work_copy,
)

JOB_PREFIX = "batchctl-"
CLAIM = "claim"
JOB_FILE = "slurm_job"
STOP_FILE = "slurm_stop"
VOID = "void"
COMMAND_TIMEOUT_S = 60.0
# A claim without a job id, untouched for this long: its submitter died (a
# live one touches it before each Slurm command of the submission, and gives
# up on each after COMMAND_TIMEOUT_S).
SUBMIT_GRACE_S = COMMAND_TIMEOUT_S + 15.0
POLL_MIN_S = 0.2
POLL_MAX_S = 2.0
# One squeue argument holds at most this many ids (a single argument is
# limited to 128 KiB on Linux).
IDS_PER_CALL = 5000
LOG_CHUNK = 1 << 20

# Slurm job states (squeue %T) that mean the job is over, and what they mean.
# The job's own variables a test on a cluster may need, passed through.
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURMD_NODENAME",
    "SLURM_CPUS_ON_NODE",
    "SLURM_CLUSTER_NAME",
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING"})
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "REQUEUE_HOLD"})
# Reasons a job pends that nothing but an administrator or a new submission
# changes: the job itself asks for more (or less) than its partition, QOS or
# association allows, or for what no node has. With the default
# EnforcePartLimits=NO, Slurm accepts such a job and leaves it pending.
# Not PartitionConfig: Slurm gives it at submission until the scheduler
# names the limit (PartitionTimeLimit a few seconds later).
PERMANENT_REASONS = frozenset(
    {
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "DependencyNeverSatisfied",
    }
)
# Stop reason (STOP_FILE) of a job cancelled for a permanent reason.
REFUSED = "refused"


def pending_forever(reason: str) -> bool:
    """Whether a job pending for ``reason`` would never start: one of
    PERMANENT_REASONS, or a limit of its QOS or association on one job
    (``QOSMax...PerJob...``, ``AssocMax...PerJob...``, ``QOSMin...``),
    unlike a limit on all of a user's jobs, which frees up as they end."""
    return (
        reason in PERMANENT_REASONS
        or (reason.startswith(("QOSMax", "AssocMax")) and "PerJob" in reason)
        or reason.startswith("QOSMin")
    )


def job_name(run_id: str) -> str:
    """The token on the job that says which run it is: ids can repeat after
    a controller reconfigure, names of ours do not."""
    return JOB_PREFIX + run_id


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    reason: str
    name: str


class SlurmUnavailable(Exception):
    """A Slurm command did not answer (controller down, not installed)."""


def slurm_env(machine: Machine, environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if machine.slurm_conf:
        env["SLURM_CONF"] = machine.slurm_conf
    return env


def submit_env(machine: Machine, environ: Mapping[str, str]) -> dict[str, str]:
    """What ``sbatch`` runs with, and so what the job starts with
    (``--export=ALL``): the base variables and where the cluster's
    configuration is, nothing else of the controller's environment. Any
    other ``--export`` makes slurmd load the user's login environment first
    (``su -``), measured at five times the cost of a trivial job."""
    env = {name: environ[name] for name in BASE_VARIABLES if name in environ}
    conf = machine.slurm_conf or environ.get("SLURM_CONF")
    if conf:
        env["SLURM_CONF"] = conf
    return env


def _command(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmUnavailable(f"{argv[0]}: {exc}") from None


def parse_squeue(text: str) -> dict[str, JobState]:
    """Lines of ``%i|%T|%r|%j`` (the name last: it is the one free text)."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            states[parts[0]] = JobState(*parts)
    return states


SQUEUE_FORMAT = "%i|%T|%r|%j"


def query_jobs(job_ids: Sequence[str], env: Mapping[str, str]) -> dict[str, JobState]:
    """The state of each job Slurm still knows, by id, including ended
    ones (``-t all``). One call per IDS_PER_CALL ids."""
    states: dict[str, JobState] = {}
    for start in range(0, len(job_ids), IDS_PER_CALL):
        chunk = ",".join(job_ids[start : start + IDS_PER_CALL])
        done = _command(["squeue", "-h", "-t", "all", "-j", chunk, "-o", SQUEUE_FORMAT], env)
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                continue  # none of them is known any more
            raise SlurmUnavailable(f"squeue: {done.stderr.strip() or done.returncode}")
        states.update(parse_squeue(done.stdout))
    return states


def jobs_named(names: Sequence[str], env: Mapping[str, str]) -> dict[str, JobState]:
    """Jobs of these names, by name (the newest if several)."""
    found: dict[str, JobState] = {}
    if not names:
        return found
    done = _command(
        ["squeue", "-h", "-t", "all", "--name", ",".join(names), "-o", SQUEUE_FORMAT], env
    )
    if done.returncode != 0:
        raise SlurmUnavailable(f"squeue: {done.stderr.strip() or done.returncode}")
    for state in parse_squeue(done.stdout).values():
        known = found.get(state.name)
        if known is None or int(state.job_id) > int(known.job_id):
            found[state.name] = state
    return found


def outcome_of(state: JobState, exit_text: str | None, stop_reason: str | None) -> Ended:
    """What an ended job means for its run. ``exit_text`` is the test's exit
    status as the job script wrote it (None: the script never got there)."""
    job = f"Slurm job {state.job_id}"
    if state.state == "CANCELLED" or (stop_reason and state.state != "COMPLETED"):
        if stop_reason and stop_reason.startswith(REFUSED + " "):
            return Ended(
                RunStatus.ERROR,
                error_code="slurm_refused",
                message=f"Slurm would never start job {state.job_id}: "
                f"pending for {stop_reason.partition(' ')[2]}",
            )
        if stop_reason and stop_reason.startswith("timeout"):
            return Ended(RunStatus.TIMEOUT, message=stop_reason.partition(" ")[2] or "timed out")
        return Ended(RunStatus.INTERRUPTED, message=f"cancelled ({job} {state.state})")
    if state.state in ("COMPLETED", "FAILED") and exit_text is not None:
        return ended_from_exit(exit_text)
    if state.state in ("TIMEOUT", "DEADLINE"):
        return Ended(RunStatus.TIMEOUT, message=f"{job} reached Slurm's time limit ({state.state})")
    if state.state == "PREEMPTED":
        return Ended(RunStatus.INTERRUPTED, message=f"{job} was preempted")
    codes = {
        "NODE_FAIL": "node_fail",
        "BOOT_FAIL": "boot_fail",
        "OUT_OF_MEMORY": "out_of_memory",
    }
    code = codes.get(state.state, "launch_failed")
    return Ended(
        RunStatus.ERROR,
        error_code=code,
        message=f"{job} ended {state.state} ({state.reason})",
    )


def ended_from_exit(exit_text: str) -> Ended:
    try:
        code = int(exit_text)
    except ValueError:
        return Ended(RunStatus.ERROR, error_code="exit_unreadable", message=exit_text[:200])
    if code > 128:
        ended = from_exit_code(code)
        return Ended(ended.status, exit_code=code, message=f"killed by signal {code - 128}")
    return from_exit_code(code)


def job_script(root: str, entrypoint: str) -> str:
    """The batch script: run the entrypoint in ``work/`` with exactly the
    variables of ``env`` over the node's base ones, and write its exit
    status to ``exit``. Its output is the job's (``--output``)."""
    q = shlex.quote
    base = " ".join(f'${{{name}+"{name}=${name}"}}' for name in (*BASE_VARIABLES, *SLURM_VARIABLES))
    load = q('set -a; . "$0"; set +a; rm -f "$0"; exec "$@"')
    runner = f"./{entrypoint}"
    return (
        "#!/bin/sh\n"
        f"root={q(root)}\n"
        ': > "$root/started"\n'
        'cd "$root/work" || exit 97\n'
        f"if [ -x {q(runner)} ]; then set -- {q(runner)}; else set -- sh {q(runner)}; fi\n"
        f'env -i {base} "PWD=$PWD" sh -c {load} "$root/env" "$@" </dev/null\n'
        "code=$?\n"
        'echo $code > "$root/exit"\n'
        "exit $code\n"
    )


def node_features(env: Mapping[str, str]) -> frozenset[str]:
    """Every feature some node of the cluster has (``sinfo``)."""
    done = _command(["sinfo", "-h", "-o", "%f"], env)
    if done.returncode != 0:
        raise SlurmUnavailable(f"sinfo: {done.stderr.strip() or done.returncode}")
    return frozenset(
        feature for line in done.stdout.split() for feature in line.split(",") if feature
    )


def cluster_nodes(machine: Machine, environ: Mapping[str, str]) -> list[NodeView]:
    """The nodes of the machine's partition (or of the cluster), one ``sinfo``."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%T|%f|%C"]
    if machine.partition:
        argv += ["-p", machine.partition]
    done = _command(argv, slurm_env(machine, environ))
    if done.returncode != 0:
        raise SlurmUnavailable(f"sinfo: {done.stderr.strip() or done.returncode}")
    nodes: dict[str, NodeView] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] not in nodes:
            name, state, features, cpus = parts
            listed = [] if features in ("", "(null)") else features.split(",")
            # %C is allocated/idle/other/total
            nodes[name] = NodeView(name=name, state=state, features=listed, cpus=cpus)
    return list(nodes.values())


def sbatch_argv(
    machine: Machine,
    run: Run,
    root: str,
    *,
    selector: str,
    timeout_s: int,
    comment: str,
    features: frozenset[str] | None = None,
) -> list[str]:
    """One job for one run. ``--time`` is a backstop a minute past the
    run's timeout (batchctl cancels at the timeout itself). A tag that is a
    node feature constrains the job to those nodes; another tag (``local``,
    the plan's default) selects the cluster as a whole. ``features`` None:
    every tag is taken for a feature."""
    minutes = max(1, math.ceil(timeout_s / 60) + 1)
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name(run.id)}",
        f"--comment={comment}",
        f"--output={root}/output.log",
        f"--chdir={root}/work",
        "--export=ALL",
        "--no-requeue",
        f"--time={minutes}",
    ]
    if machine.partition:
        argv.append(f"--partition={machine.partition}")
    if machine.account:
        argv.append(f"--account={machine.account}")
    if machine.qos:
        argv.append(f"--qos={machine.qos}")
    kind, _, value = selector.partition(":")
    if kind == "tag" and (features is None or value in features):
        argv.append(f"--constraint={value}")
    elif kind == "machine" and value != machine.name:
        argv.append(f"--nodelist={value}")
    return [*argv, *machine.sbatch_args, f"{root}/job.sh"]


class SlurmTransport:
    def __init__(
        self,
        runs: RunStore,
        clock: Clock,
        *,
        entries: EntryLookup,
        fleet: FleetSource,
        environ: Mapping[str, str] | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.runs = runs
        self.clock = clock
        self.entries = entries
        self.fleet = fleet
        self.environ = dict(os.environ if environ is None else environ)
        self.snapshots = snapshots
        self._jobs: dict[str, str] = {}
        self._next_poll: datetime | None = None
        self._interval = POLL_MIN_S
        self._in_flight = 0
        self._features: dict[str, frozenset[str]] = {}
        self._clearing: dict[str, Path] = {}
        self._swept: set[str] = set()

    # -- starting ------------------------------------------------------------

    def start(self, runs: Sequence[Run]) -> None:
        """One ``sbatch`` per run: each has its own directory, variables,
        options and token, and an array of 1,000 trivial tasks was measured
        no faster than 1,000 ``sbatch`` (bench/RESULTS.md). O(runs)."""
        for run in runs:
            self._submit(run)
        self._poll_soon()

    def _machine(self, run: Run) -> Machine | None:
        machine = self.fleet.get().get(run.machine)
        return machine if machine is not None and machine.transport == "slurm" else None

    def _root(self, machine: Machine, run_id: str) -> Path:
        assert machine.shared_dir is not None
        return Path(machine.shared_dir) / run_id

    def _submit(self, run: Run) -> None:
        machine = self._machine(run)
        if machine is None:
            return
        run_dir = self.runs.run_dir(run.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = run_dir / CLAIM
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # submitted already, or being submitted, or stopped
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        staging, entry = self.entries(run)
        root = self._root(machine, run.id)
        try:
            self._prepare(run, machine, root, entry, staging)
        except NotStarted as problem:
            self._finish(run, problem.ended)
            shutil.rmtree(root, ignore_errors=True)
            return
        env = submit_env(machine, self.environ)
        job_id = ""
        try:
            if machine.name not in self._features:
                os.utime(claim)
                self._features[machine.name] = node_features(env)
            argv = sbatch_argv(
                machine,
                run,
                str(root),
                selector=entry.get("selector", ""),
                timeout_s=int(entry.get("timeout_s") or 3600),
                comment=f"batchctl {run.batch_id} {run.item}",
                features=self._features[machine.name],
            )
            if not self._still_to_submit(run, claim):
                shutil.rmtree(root, ignore_errors=True)
                return
            done = _command(argv, env)
            job_id = done.stdout.strip().split(";", 1)[0]
            if done.returncode != 0 or not job_id.isdigit():
                why = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
                raise SlurmUnavailable(f"sbatch: {why}")
        except SlurmUnavailable as exc:
            # An answer lost on the way back may still have made the job.
            job_id = ""
            os.utime(claim)
            with contextlib.suppress(SlurmUnavailable):
                made = jobs_named([job_name(run.id)], env).get(job_name(run.id))
                if made is not None:
                    job_id = made.job_id
            if not job_id.isdigit():
                self._finish(
                    run, Ended(RunStatus.ERROR, error_code="submit_failed", message=str(exc))
                )
                shutil.rmtree(root, ignore_errors=True)
                return
        write_atomically(run_dir / JOB_FILE, job_id.encode())
        self._jobs[run.id] = job_id

    def _still_to_submit(self, run: Run, claim: Path) -> bool:
        """Touch the claim, so that the grace a successor gives it counts
        from now, then read the run under the runs lock: False if it ended
        meanwhile (a successor or ``cancel`` took this submitter for dead
        while it prepared). A successor records that end under the same lock
        only if the claim is still old, so of the two exactly one wins."""
        os.utime(claim)
        return not self.runs.update(run.id, lambda _: None).status.terminal

    def _prepare(
        self, run: Run, machine: Machine, root: Path, entry: Mapping[str, Any], staging: str
    ) -> None:
        """The run's directory in the shared directory: the test, its inputs,
        its variables and the job script."""
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700, parents=True)
        work = work_copy(
            root, test_dir=run.test_dir, snapshot=entry.get("snapshot"), snapshots=self.snapshots
        )
        entrypoint_in(work, machine.entrypoint, run.test_dir)
        given = {
            "BATCHCTL_ARTIFACTS_DIR": str(root / "artifacts"),
            **inputs_given(
                root,
                entry.get("inputs", ()),
                lambda item: artifacts_of_passing_run(
                    self.runs, self.entries.batch_raw(run.batch_id), item
                ),
            ),
        }
        (root / "artifacts").mkdir(mode=0o700, exist_ok=True)
        Path(run.artifacts_path).mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(run.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        env = run_variables(
            controller=self.environ,
            env_pass=self.fleet.get().env_pass_for(machine, entry.get("env_pass", ())),
            entry_env=entry.get("env", {}),
            batchctl={**batchctl_variables(run, staging), **given},
        )
        env_file = root / "env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(PosixCommands.env_file(env))
        script = root / "job.sh"
        script.write_text(job_script(str(root), machine.entrypoint))
        script.chmod(0o700)

    # -- looking at runs -----------------------------------------------------

    def wakeup_fds(self) -> list[int]:
        return []

    def due_in(self, now: datetime) -> float | None:
        """The next state read, while jobs are in flight."""
        if not self._in_flight or self._next_poll is None:
            return None
        return max(0.0, (self._next_poll - now).total_seconds())

    def _poll_soon(self) -> None:
        self._interval = POLL_MIN_S
        self._next_poll = None

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Read the state of every job in flight, one ``squeue`` per cluster,
        at most every few seconds (sooner after a change). O(runs in flight)."""
        live = [run for run in runs if not run.status.terminal]
        self._in_flight = len(live)
        for run in runs:
            if run.status.terminal:
                self._jobs.pop(run.id, None)
        if not live or (self._next_poll is not None and now < self._next_poll):
            return []
        lost, changed = self._poll(live, now)
        self._interval = POLL_MIN_S if changed else min(self._interval * 1.5, POLL_MAX_S)
        self._next_poll = now + timedelta(seconds=self._interval)
        return lost

    def _job_of(self, run: Run) -> str | None:
        job = self._jobs.get(run.id)
        if job is None:
            job = _read(self.runs.run_dir(run.id) / JOB_FILE)
            if job is not None:
                self._jobs[run.id] = job
        return job

    def _poll(self, runs: Iterable[Run], now: datetime) -> tuple[list[str], bool]:
        """Fresh states for ``runs``; records every change in one write.
        Returns (runs found lost, whether anything changed)."""
        by_machine: dict[str, list[tuple[Run, str]]] = {}
        unknown: dict[str, list[Run]] = {}
        lost: list[str] = []
        changes: dict[str, Callable[[Run], Run | None]] = {}
        # The shared directories of the runs seen ended (_end), by run id.
        clearing = self._clearing = {}
        for run in runs:
            machine = self._machine(run)
            if machine is None:
                continue
            job = self._job_of(run)
            if job is not None:
                by_machine.setdefault(machine.name, []).append((run, job))
                continue
            claim = self.runs.run_dir(run.id) / CLAIM
            # An empty claim: its submitter died before writing its pid.
            if _claimed(claim) and _age_s(claim, now) > SUBMIT_GRACE_S:
                unknown.setdefault(machine.name, []).append(run)
        fleet = self.fleet.get()
        for name, waiting in unknown.items():
            machine = fleet.get(name)
            assert machine is not None
            try:
                found = jobs_named(
                    [job_name(run.id) for run in waiting], slurm_env(machine, self.environ)
                )
            except SlurmUnavailable:
                continue
            for run in waiting:
                state = found.get(job_name(run.id))
                if state is not None:
                    # Its submitter died after sbatch and before noting the id.
                    write_atomically(self.runs.run_dir(run.id) / JOB_FILE, state.job_id.encode())
                    self._jobs[run.id] = state.job_id
                    by_machine.setdefault(name, []).append((run, state.job_id))
                else:
                    changes[run.id] = self._submitter_died(run, now, lost)
        for name, pairs in by_machine.items():
            machine = fleet.get(name)
            assert machine is not None
            self._sweep(machine)
            try:
                states = query_jobs([job for _, job in pairs], slurm_env(machine, self.environ))
            except SlurmUnavailable:
                continue  # nothing is known: nothing changes
            for run, job in pairs:
                state = states.get(job)
                if state is not None and state.name != job_name(run.id):
                    state = None  # an id Slurm gave again, to another job
                change = self._look(run, machine, job, state, now, lost)
                if change is not None:
                    changes[run.id] = change
        if changes:
            recorded = self.runs.update_many(changes)
            # Only once their ends are recorded: a worker killed before this
            # leaves the directories for its successor to read the ends from.
            for ended_run in recorded:
                root = clearing.get(ended_run.id)
                if root is not None and ended_run.status.terminal:
                    shutil.rmtree(root, ignore_errors=True)
        return lost, bool(changes)

    def _sweep(self, machine: Machine) -> None:
        """Remove the shared directories of runs whose end is recorded,
        which a worker killed between recording an end and removing the
        directory left behind. Once per worker and machine: O(directories
        there); a directory of a run this state does not know is not ours."""
        if machine.keep_remote or machine.name in self._swept or machine.shared_dir is None:
            return
        self._swept.add(machine.name)
        try:
            names = [entry.name for entry in Path(machine.shared_dir).iterdir()]
        except OSError:
            return
        for run_id, run in self.runs.get_many(names).items():
            if run.status.terminal:
                shutil.rmtree(self._root(machine, run_id), ignore_errors=True)

    def _submitter_died(
        self, run: Run, now: datetime, lost: list[str]
    ) -> Callable[[Run], Run | None]:
        """End a run whose submitter died before Slurm took its job, if
        the claim is still old under the runs lock: a live submitter touches
        it before reading the run under that lock and then calling sbatch
        (_still_to_submit)."""
        run_dir = self.runs.run_dir(run.id)
        end = ending(
            Ended(RunStatus.INTERRUPTED, message="its submitter died before Slurm took the job"),
            now,
        )

        def change(current: Run) -> Run | None:
            claim = run_dir / CLAIM
            if (run_dir / JOB_FILE).exists() or _age_s(claim, self.clock.now()) <= SUBMIT_GRACE_S:
                return None
            ended = end(current)
            if ended is not None:
                lost.append(run.id)
            return ended

        return change

    def _look(
        self,
        run: Run,
        machine: Machine,
        job: str,
        state: JobState | None,
        now: datetime,
        lost: list[str],
    ) -> Callable[[Run], Run | None] | None:
        root = self._root(machine, run.id)
        run_dir = self.runs.run_dir(run.id)
        if state is None:
            # Slurm forgot the job (purged after MinJobAge) before we saw it end.
            exit_text = _read(root / "exit")
            if exit_text is not None:
                return self._end(run, machine, root, ended_from_exit(exit_text), now)
            lost.append(run.id)
            return self._end(
                run,
                machine,
                root,
                Ended(
                    RunStatus.INTERRUPTED,
                    message=f"Slurm no longer knows job {job} and it left no exit status",
                ),
                now,
            )
        if state.state in RUNNING_STATES:
            self._copy_log(run, root)
            # The node's clock (or the file server's) wrote it: never later than ours.
            started_at = min(_mtime(root / "started") or run.started_at or now, now)
            timeout_s = self.entries(run)[1].get("timeout_s")
            if (
                timeout_s is not None
                and now - (run.started_at or started_at) >= timedelta(seconds=timeout_s)
                and _read(run_dir / STOP_FILE) is None
            ):
                self._stop(run, machine, job, f"timeout timed out after {timeout_s}s")
            if run.status is RunStatus.PENDING:
                return lambda current: (
                    current.model_copy(
                        update={
                            "status": RunStatus.RUNNING,
                            "started_at": started_at,
                            "message": None,
                        }
                    )
                    if not current.claimed
                    else None
                )
            return None
        if state.state in PENDING_STATES:
            if pending_forever(state.reason) and _read(run_dir / STOP_FILE) is None:
                self._stop(run, machine, job, f"{REFUSED} {state.reason}")
            message = f"waiting in Slurm: {state.reason}"
            if run.message != message:
                return lambda current: (
                    current.model_copy(update={"message": message})
                    if not current.status.terminal
                    else None
                )
            return None
        stop_reason = _read(run_dir / STOP_FILE)
        ended = outcome_of(state, _read(root / "exit"), stop_reason)
        if ended.status is RunStatus.INTERRUPTED and stop_reason is None:
            lost.append(run.id)  # cancelled or preempted outside batchctl
        return self._end(run, machine, root, ended, now)

    def _end(
        self, run: Run, machine: Machine, root: Path, ended: Ended, now: datetime
    ) -> Callable[[Run], Run | None]:
        """Bring back the rest of the log and the artifacts. The run's
        directory in the shared directory is removed by the caller once the
        end is recorded."""
        self._copy_log(run, root)
        problem = _collect(root / "artifacts", Path(run.artifacts_path), machine.max_artifacts_mb)
        if problem is not None:
            if ended.status is RunStatus.SUCCEEDED:
                ended = Ended(RunStatus.ERROR, error_code="collect_failed", message=problem)
            else:
                ended = Ended(
                    ended.status,
                    ended.exit_code,
                    ended.error_code,
                    f"{ended.message or ''}; {problem}".lstrip("; "),
                )
        started_at = _mtime(root / "started")
        ended_at = _mtime(root / "exit") or now
        self._jobs.pop(run.id, None)
        if not machine.keep_remote:
            self._clearing[run.id] = root
        return ending(ended, min(ended_at, now), started_at=started_at)

    def _copy_log(self, run: Run, root: Path) -> None:
        """Append what the job's output file gained since the last look.
        O(new bytes)."""
        source = root / "output.log"
        try:
            with open(run.log_path, "ab") as target, open(source, "rb") as handle:
                handle.seek(target.tell())
                while chunk := handle.read(LOG_CHUNK):
                    target.write(chunk)
        except OSError:
            return

    # -- stopping ------------------------------------------------------------

    def _stop(self, run: Run, machine: Machine, job: str, reason: str) -> None:
        """Note why (a successor worker reads it), then ``scancel``: the end
        is recorded when a later read shows the job over."""
        write_atomically(self.runs.run_dir(run.id) / STOP_FILE, reason.encode())
        with contextlib.suppress(SlurmUnavailable):
            _command(["scancel", job], slurm_env(machine, self.environ))
        self._poll_soon()

    def terminate(self, run: Run) -> Run:
        """Void an unsubmitted run, or ``scancel`` its job once: the run ends
        when a later ``check`` reads the job over (a cancelled batch's
        worker calls this every step, so it costs no Slurm call after the
        first)."""
        now = self.clock.now()
        run_dir = self.runs.run_dir(run.id)
        machine = self._machine(run)
        if _take_claim(run_dir):
            return self.runs.finish(
                run.id, RunStatus.INTERRUPTED, now=now, message="cancelled before it started"
            )
        if machine is None:
            return run
        job = self._job_of(run)
        if job is None:
            claim = run_dir / CLAIM
            if _read(claim) == VOID or _age_s(claim, now) <= SUBMIT_GRACE_S:
                return self.runs.get(run.id)  # its submission is under way
            self._poll([run], now)
            return self.runs.get(run.id)
        if _read(run_dir / STOP_FILE) is None:
            self._stop(run, machine, job, "cancelled")
        return self.runs.get(run.id)

    def _finish(self, run: Run, ended: Ended) -> None:
        record_end(self.runs, run.id, ended, self.clock.now())


def _collect(source: Path, destination: Path, max_mb: int) -> str | None:
    """Copy the artifacts through tar and the same checks as an ssh run's
    (the test wrote them: links, sizes and names are untrusted). None once
    done, else why not."""
    if not source.is_dir():
        return None
    try:
        with subprocess.Popen(
            ["tar", "-cf", "-", "-C", str(source), "."],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        ) as tar:
            assert tar.stdout is not None
            try:
                safe_extract(tar.stdout, destination, max_bytes=max_mb << 20)
            except UnsafeArchive:
                tar.kill()
                raise
            code = tar.wait()
    except (OSError, UnsafeArchive) as exc:
        return f"artifacts not collected: {exc}"
    return None if code == 0 else f"artifacts not collected: tar exited with status {code}"


def _take_claim(run_dir: Path) -> bool:
    """Claim an unsubmitted run for nobody (it will not be submitted). False
    if a submitter claimed it first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    void = run_dir / f"claim.void.{os.getpid()}"
    write_atomically(void, VOID.encode())
    try:
        os.link(void, run_dir / CLAIM)
        return True
    except FileExistsError:
        return False
    finally:
        void.unlink(missing_ok=True)


def _claimed(claim: Path) -> bool:
    """Claimed by a submitter: the claim exists, empty or with its pid
    (not voided by a stop)."""
    try:
        return claim.read_text().strip() != VOID
    except OSError:
        return False


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


def _age_s(path: Path, now: datetime) -> float:
    written = _mtime(path)
    return (now - written).total_seconds() if written is not None else 0.0
