"""The transport contract, run against the fake the scheduler tests use and
against the real transports: local, ssh (a real sshd) and slurm (a real
Slurm cluster on this host)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchctl.model.clock import SystemClock
from batchctl.model.fleet import FleetSource, load_fleet
from batchctl.model.models import Batch, Item, Run, RunStatus
from batchctl.model.plan import load_plan_text
from batchctl.state.batches import BatchStore
from batchctl.state.runs import PrepareRequest, RunStore
from batchctl.transports.base import Transport
from batchctl.transports.detached import DetachedTransport
from batchctl.transports.local import EntryLookup, LocalTransport
from batchctl.transports.processes import group_alive
from batchctl.transports.rundir import read_pgid
from batchctl.transports.slurm import SlurmTransport
from tests.fakes import FakeClock, FakeTransport
from tests.helpers import blocking_script, make_suite, processes_of, wait_until
from tests.slurm import SlurmCluster
from tests.sshd import Sshd

SCRIPTS = {
    "pass": (
        "#!/bin/sh\necho hello from $BATCHCTL_ITEM\n"
        'echo $BATCHCTL_ITEM > "$BATCHCTL_ARTIFACTS_DIR/result.txt"\n'
    ),
    "fail": "#!/bin/sh\necho hello from $BATCHCTL_ITEM\nexit 3\n",
}


class Harness:
    """Prepares runs of real test directories and waits for their end."""

    def __init__(
        self,
        kind: str,
        tmp: Path,
        state_dir: Path,
        sshd: Sshd | None = None,
        cluster: SlurmCluster | None = None,
    ) -> None:
        self.kind = kind
        self.tmp = tmp
        self.release = tmp / "release"
        self.runs = RunStore(state_dir)
        self.batches = BatchStore(state_dir)
        self.transport: Transport
        self.cluster_env = cluster.env if cluster is not None else {}
        if kind == "fake":
            self.fake = FakeTransport(self.runs, FakeClock())
            self.fake.outcomes["fail"] = (RunStatus.FAILED, 3)
            self.fake.hold.add("hold")
            self.transport = self.fake
        else:
            if sshd is not None:
                machine = sshd.machine("m1", slots=8)
            elif cluster is not None:
                machine = cluster.machine(tmp / "shared", "m1", tags="[local]")
            else:
                machine = "  - {name: m1, transport: local, tags: [local], slots: 8}\n"
            fleet_file = tmp / "fleet.yaml"
            fleet_file.write_text("machines:\n" + machine)
            fleet = FleetSource(lambda: load_fleet(fleet_file))
            if kind == "slurm":
                self.transport = SlurmTransport(
                    self.runs, SystemClock(), entries=EntryLookup(self.batches.raw), fleet=fleet
                )
            elif kind == "local":
                self.transport = LocalTransport(
                    self.runs,
                    SystemClock(),
                    entries=EntryLookup(self.batches.raw),
                    fleet=fleet,
                    kill_grace_s=2,
                )
            else:
                self.transport = DetachedTransport(
                    self.runs, SystemClock(), kill_grace_s=2, fleet_path=fleet_file, fleet=fleet
                )
        make_suite(tmp / "suites", "pass", SCRIPTS["pass"])
        make_suite(tmp / "suites", "fail", SCRIPTS["fail"])
        make_suite(tmp / "suites", "hold", blocking_script(self.release, before="started"))
        plan = load_plan_text(
            "version: 1\nentries:\n"
            + "".join(f"  - {{name: {n}, dir: suites/{n}}}\n" for n in ("pass", "fail", "hold")),
            path="plan.yaml",
            base_dir=tmp,
            source="inline",
            env_tag=None,
        )
        now = datetime.now(UTC)
        batch = Batch(
            id="b1",
            plan_hash=plan.plan_hash,
            staging="s",
            created_by="t@h",
            created_at=now,
            expected_count=3,
            source="inline",
            entries=plan.entries,
            items={e.name: Item(name=e.name) for e in plan.entries},
        )
        self.batches.create_or_get(plan.plan_hash, "s", force_new=True, new_batch=lambda: batch)

    def prepare(self, item: str) -> Run:
        [result] = self.runs.prepare_many(
            [PrepareRequest("b1", item, 1, ["m1"], str(self.tmp / "suites" / item), "h")],
            slots={"m1": 8},
            now=datetime.now(UTC),
        )
        assert result.run is not None
        return result.run

    def look(self, run_id: str) -> list[str]:
        """What a worker does each tick: the transport looks at the run."""
        return self.transport.check([self.runs.get(run_id)], datetime.now(UTC))

    def wait_for(self, run_id: str, done: Callable[[Run], bool], what: str) -> Run:
        if self.kind == "fake":
            self.fake.finish_running()

        def looked_and_done() -> bool:
            self.look(run_id)
            return done(self.runs.get(run_id))

        wait_until(looked_and_done, timeout=30, what=what)
        return self.runs.get(run_id)

    def settle(self, run_id: str) -> Run:
        return self.wait_for(run_id, lambda run: run.status.terminal, "the run to end")


@pytest.fixture(params=["fake", "local", "ssh", "slurm"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, state_dir: Path) -> Harness:
    kind = str(request.param)
    server = request.getfixturevalue("sshd") if kind == "ssh" else None
    cluster = request.getfixturevalue("slurm_cluster") if kind == "slurm" else None
    if cluster is not None:
        (tmp_path / "shared").mkdir()
    return Harness(kind, tmp_path, state_dir, server, cluster)


def assert_no_test_process_left(harness: Harness) -> None:
    """No process runs in a copy of the test (local run dirs and the "remote"
    workdir are both under the test's directory)."""

    def leftovers() -> list[int]:
        found = []
        for pid in processes_of(harness.tmp):
            with contextlib.suppress(OSError):
                if str(Path(f"/proc/{pid}/cwd").readlink()).endswith("/work"):
                    found.append(pid)
        return found

    # The remote wrapper shell exits a moment after its test is killed.
    wait_until(lambda: not leftovers(), timeout=10, what="no test process left")


def read_if_there(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def running(harness: Harness, run_id: str) -> Run:
    """Wait until the test itself is running (it printed 'started')."""
    return harness.wait_for(
        run_id,
        lambda r: (
            r.status is RunStatus.RUNNING
            and (harness.kind == "fake" or "started" in read_if_there(Path(r.log_path)))
        ),
        "the run to be running",
    )


def test_a_passing_run_succeeds_with_its_output_and_artifacts(harness: Harness) -> None:
    run = harness.prepare("pass")
    harness.transport.start([run])

    ended = harness.settle(run.id)

    assert (ended.status, ended.exit_code) == (RunStatus.SUCCEEDED, 0)
    assert ended.started_at is not None
    assert ended.ended_at is not None
    assert "hello from pass" in Path(ended.log_path).read_text()
    assert (Path(ended.artifacts_path) / "result.txt").read_text().strip() == "pass"


def test_a_failing_run_keeps_its_exit_code(harness: Harness) -> None:
    run = harness.prepare("fail")
    harness.transport.start([run])

    ended = harness.settle(run.id)

    assert (ended.status, ended.exit_code) == (RunStatus.FAILED, 3)


def test_starting_a_run_twice_executes_it_once(harness: Harness) -> None:
    run = harness.prepare("pass")
    harness.transport.start([run])
    harness.transport.start([run])

    ended = harness.settle(run.id)

    assert ended.status is RunStatus.SUCCEEDED
    assert Path(ended.log_path).read_text().count("hello from pass") == 1


def test_terminate_stops_a_running_run_as_interrupted(harness: Harness) -> None:
    run = harness.prepare("hold")
    harness.transport.start([run])
    running_run = running(harness, run.id)

    harness.transport.terminate(running_run)
    ended = harness.settle(run.id)

    assert ended.status is RunStatus.INTERRUPTED
    pgid = read_pgid(harness.runs.run_dir(run.id))
    if pgid is not None:
        assert not group_alive(pgid)
    assert_no_test_process_left(harness)


def test_terminate_before_start_means_it_never_runs(harness: Harness) -> None:
    run = harness.prepare("pass")
    harness.transport.terminate(run)
    harness.transport.start([run])

    ended = harness.settle(run.id)

    assert ended.status is RunStatus.INTERRUPTED
    assert not Path(ended.log_path).exists() or "hello" not in Path(ended.log_path).read_text()


def test_a_lost_executor_is_noticed(harness: Harness) -> None:
    run = harness.prepare("hold")
    harness.transport.start([run])
    running_run = running(harness, run.id)
    if harness.kind == "fake":
        harness.fake.dead_executors.add(run.id)
    elif harness.kind == "slurm":
        # Slurm supervises the job: what a run loses there is its job,
        # ended behind batchctl's back.
        job = (harness.runs.run_dir(run.id) / "slurm_job").read_text()
        subprocess.run(["scancel", job], env=harness.cluster_env, check=True)
    else:
        assert running_run.supervisor is not None
        os.kill(running_run.supervisor.pid, signal.SIGKILL)

    wait_until(lambda: run.id in harness.look(run.id), what="the loss noticed")
    ended = harness.settle(run.id)
    assert ended.status is RunStatus.INTERRUPTED
    pgid = read_pgid(harness.runs.run_dir(run.id))
    if pgid is not None:
        assert not group_alive(pgid)
    assert_no_test_process_left(harness)  # the orphaned test process was killed too
