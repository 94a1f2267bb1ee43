"""A worker that dies around ``sbatch`` leaves a claim with no job id beside
it: its successor finds the job by the run's token, or, if no job carries
it, ends the run instead of submitting it a second time. Against the real
cluster of tests/slurm.py."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchctl.model.clock import SystemClock
from batchctl.model.models import Run, RunStatus
from batchctl.transports import slurm
from batchctl.transports.local import EntryLookup
from batchctl.transports.slurm import CLAIM, JOB_FILE, SUBMIT_GRACE_S, SlurmTransport, job_name
from tests.helpers import wait_until
from tests.slurm import SlurmCluster
from tests.transports.test_contract import Harness


def successor(harness: Harness) -> SlurmTransport:
    """A fresh transport, as a worker that took the batch over has."""
    assert isinstance(harness.transport, SlurmTransport)
    return SlurmTransport(
        harness.runs,
        SystemClock(),
        entries=EntryLookup(harness.batches.raw),
        fleet=harness.transport.fleet,
    )


def age_claim(harness: Harness, run_id: str) -> None:
    """As if the submitter had died longer ago than the grace it is given."""
    claim = harness.runs.run_dir(run_id) / CLAIM
    past = time.time() - SUBMIT_GRACE_S - 5
    os.utime(claim, (past, past))


def test_a_job_submitted_by_a_worker_that_died_before_noting_its_id_is_adopted(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    harness.transport.start([run])
    job_file = harness.runs.run_dir(run.id) / JOB_FILE
    submitted = job_file.read_text()
    job_file.unlink()  # the worker died between sbatch and writing the id
    age_claim(harness, run.id)
    harness.transport = successor(harness)
    harness.transport.start([run])  # the scheduler starts unclaimed runs again

    ended = harness.settle(run.id)

    assert (ended.status, ended.exit_code) == (RunStatus.SUCCEEDED, 0)
    assert job_file.read_text() == submitted
    names = [name for _, _, _, name in slurm_cluster.jobs()]
    assert names.count(job_name(run.id)) == 1
    assert Path(ended.log_path).read_text().count("hello from pass") == 1


def test_a_claim_no_job_carries_ends_the_run_interrupted_and_nothing_is_submitted(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    run_dir = harness.runs.run_dir(run.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CLAIM).write_text("12345")  # claimed by a worker that died before sbatch
    age_claim(harness, run.id)
    harness.transport.start([run])

    lost = harness.look(run.id)

    assert lost == [run.id]
    ended = harness.runs.get(run.id)
    assert ended.status is RunStatus.INTERRUPTED
    assert "died before Slurm took the job" in (ended.message or "")
    names = [name for _, _, _, name in slurm_cluster.jobs()]
    assert job_name(run.id) not in names


class Killed(BaseException):
    """The worker dies here."""


def test_a_worker_killed_as_it_clears_an_ended_runs_directory_leaves_its_end_recorded(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    harness.transport.start([run])
    root = tmp_path / "shared" / run.id

    remove = shutil.rmtree

    def remove_then_die(path: Path, ignore_errors: bool = False) -> None:
        remove(path, ignore_errors=ignore_errors)
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", remove_then_die)
    with pytest.raises(Killed):
        wait_until(lambda: harness.look(run.id) == ["never"], timeout=30, what="the job to end")
    monkeypatch.undo()
    assert not root.exists()
    harness.transport = successor(harness)

    ended = harness.settle(run.id)

    assert (ended.status, ended.exit_code, ended.error_code) == (RunStatus.SUCCEEDED, 0, None)


def test_the_directory_of_a_run_whose_end_was_recorded_is_removed_by_a_successor(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    harness.transport.start([run])
    root = tmp_path / "shared" / run.id

    def die(path: Path, ignore_errors: bool = False) -> None:
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", die)
    with pytest.raises(Killed):
        wait_until(lambda: harness.look(run.id) == ["never"], timeout=30, what="the job to end")
    monkeypatch.undo()
    assert harness.runs.get(run.id).status is RunStatus.SUCCEEDED
    assert root.is_dir()  # killed before removing it
    harness.transport = successor(harness)
    other = harness.prepare("fail")
    harness.transport.start([other])

    harness.look(other.id)

    assert not root.exists()
    assert harness.settle(other.id).status is RunStatus.FAILED


def test_an_empty_claim_left_by_a_worker_that_died_at_once_ends_the_run_interrupted(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    run_dir = harness.runs.run_dir(run.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CLAIM).write_text("")  # died between creating the claim and writing its pid
    age_claim(harness, run.id)

    lost = harness.look(run.id)

    assert lost == [run.id]
    assert harness.runs.get(run.id).status is RunStatus.INTERRUPTED


def slow_to_prepare(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]
) -> None:
    """The submitter's copy of the test takes longer than the grace, and
    ``meanwhile`` happens at its end."""
    transport = harness.transport
    assert isinstance(transport, SlurmTransport)
    prepare = transport._prepare

    def slow(run: Run, *args: Any) -> None:
        prepare(run, *args)
        age_claim(harness, run.id)
        meanwhile()

    monkeypatch.setattr(transport, "_prepare", slow)


def test_a_live_submitter_slow_to_reach_sbatch_is_not_taken_for_dead(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    other = successor(harness)
    slow_to_prepare(harness, monkeypatch, lambda: None)
    command = slurm._command
    looked: list[list[str]] = []

    def looked_at_during_sbatch(argv: list[str], env: Mapping[str, str]) -> Any:
        if argv[0] == "sbatch":
            looked.append(other.check([harness.runs.get(run.id)], datetime.now(UTC)))
        return command(argv, env)

    monkeypatch.setattr(slurm, "_command", looked_at_during_sbatch)
    harness.transport.start([run])
    monkeypatch.undo()

    assert looked == [[]]
    ended = harness.settle(run.id)
    assert (ended.status, ended.exit_code) == (RunStatus.SUCCEEDED, 0)


def test_a_submitter_taken_for_dead_while_it_prepared_submits_nothing(
    tmp_path: Path, state_dir: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared").mkdir()
    harness = Harness("slurm", tmp_path, state_dir, cluster=slurm_cluster)
    run = harness.prepare("pass")
    other = successor(harness)
    judged: list[list[str]] = []
    slow_to_prepare(
        harness,
        monkeypatch,
        lambda: judged.append(other.check([harness.runs.get(run.id)], datetime.now(UTC))),
    )

    harness.transport.start([run])

    assert judged == [[run.id]]
    assert harness.runs.get(run.id).status is RunStatus.INTERRUPTED
    assert job_name(run.id) not in [name for _, _, _, name in slurm_cluster.jobs()]
    assert not (harness.runs.run_dir(run.id) / JOB_FILE).exists()
    assert not (tmp_path / "shared" / run.id).exists()
