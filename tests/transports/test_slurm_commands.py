"""What a Slurm job's end means for its run, and the sbatch line a run gets:
pure functions, checked without a cluster (tests/e2e/test_slurm.py runs them
against a real one)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batchctl.model.fleet import parse_fleet
from batchctl.model.models import Run, RunStatus
from batchctl.transports.slurm import (
    JobState,
    job_name,
    outcome_of,
    parse_squeue,
    pending_forever,
    sbatch_argv,
)


@pytest.mark.parametrize(
    ("state", "reason", "exit_text", "stop", "expected"),
    [
        ("COMPLETED", "None", "0", None, (RunStatus.SUCCEEDED, 0, None)),
        ("FAILED", "NonZeroExitCode", "3", None, (RunStatus.FAILED, 3, None)),
        ("FAILED", "NonZeroExitCode", "137", None, (RunStatus.FAILED, 137, None)),
        # The job script never wrote the test's status: Slurm could not run it.
        ("FAILED", "None", None, None, (RunStatus.ERROR, None, "launch_failed")),
        ("TIMEOUT", "TimeLimit", None, None, (RunStatus.TIMEOUT, None, None)),
        ("CANCELLED", "None", None, "cancelled", (RunStatus.INTERRUPTED, None, None)),
        ("CANCELLED", "None", None, None, (RunStatus.INTERRUPTED, None, None)),
        ("CANCELLED", "None", None, "timeout timed out after 2s", (RunStatus.TIMEOUT, None, None)),
        ("NODE_FAIL", "None", None, None, (RunStatus.ERROR, None, "node_fail")),
        ("BOOT_FAIL", "None", None, None, (RunStatus.ERROR, None, "boot_fail")),
        ("OUT_OF_MEMORY", "None", None, None, (RunStatus.ERROR, None, "out_of_memory")),
        ("PREEMPTED", "None", None, None, (RunStatus.INTERRUPTED, None, None)),
    ],
)
def test_each_slurm_end_maps_to_a_run_status(
    state: str,
    reason: str,
    exit_text: str | None,
    stop: str | None,
    expected: tuple[RunStatus, int | None, str | None],
) -> None:
    ended = outcome_of(JobState("7", state, reason, "batchctl-x"), exit_text, stop)

    assert (ended.status, ended.exit_code, ended.error_code) == expected


def test_a_timeout_stop_says_how_long_the_run_had() -> None:
    ended = outcome_of(JobState("7", "CANCELLED", "None", "n"), None, "timeout timed out after 2s")

    assert ended.message == "timed out after 2s"


@pytest.mark.parametrize(
    ("reason", "forever"),
    [
        ("PartitionTimeLimit", True),
        ("PartitionNodeLimit", True),
        ("BadConstraints", True),
        ("DependencyNeverSatisfied", True),
        ("InvalidQOS", True),
        ("QOSMaxWallDurationPerJobLimit", True),
        ("AssocMaxWallDurationPerJobLimit", True),
        ("QOSMaxGRESPerJob", True),
        ("QOSMinCpuNotSatisfied", True),
        # Limits on all of a user's or group's jobs free up as they end.
        ("QOSMaxCpuPerUserLimit", False),
        ("AssocGrpCpuLimit", False),
        ("QOSMaxJobsPerUserLimit", False),
        ("Resources", False),
        ("Priority", False),
        ("Licenses", False),
        ("ReqNodeNotAvail", False),
        ("PartitionConfig", False),  # Slurm's first word, before it names the limit
        ("JobHeldAdmin", False),
    ],
)
def test_reasons_a_job_would_pend_forever(reason: str, forever: bool) -> None:
    assert pending_forever(reason) is forever


def test_a_job_cancelled_for_pending_forever_ends_error_saying_why() -> None:
    ended = outcome_of(JobState("7", "CANCELLED", "None", "n"), None, "refused PartitionTimeLimit")

    assert (ended.status, ended.error_code) == (RunStatus.ERROR, "slurm_refused")
    assert ended.message == "Slurm would never start job 7: pending for PartitionTimeLimit"


def test_squeue_lines_keep_a_name_with_the_separator_in_it() -> None:
    states = parse_squeue("12|RUNNING|None|batchctl-a\n13|PENDING|Resources|odd|name\n\n")

    assert states["12"] == JobState("12", "RUNNING", "None", "batchctl-a")
    assert states["13"].name == "odd|name"


def make_run() -> Run:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Run(
        id="20260101-000000-abcd1234",
        batch_id="b",
        item="i",
        attempt=1,
        machine="hpc",
        test_dir="/t",
        test_dir_hash="h",
        created_at=now,
        log_path="/l",
        artifacts_path="/a",
    )


def test_selectors_timeout_and_machine_options_become_sbatch_options() -> None:
    [machine] = parse_fleet(
        "machines:\n  - {name: hpc, transport: slurm, shared_dir: /s, partition: debug, "
        "account: lab, qos: fast, tags: [gpu], nodes: [n1], sbatch_args: ['--mem=1G']}\n",
        "fleet.yaml",
    ).machines
    run = make_run()

    by_tag = sbatch_argv(machine, run, "/s/r", selector="tag:gpu", timeout_s=90, comment="c")
    pinned = sbatch_argv(machine, run, "/s/r", selector="machine:n1", timeout_s=60, comment="c")
    anywhere = sbatch_argv(machine, run, "/s/r", selector="machine:hpc", timeout_s=60, comment="c")

    assert f"--job-name={job_name(run.id)}" in by_tag
    assert {"--constraint=gpu", "--partition=debug", "--account=lab", "--qos=fast"} <= set(by_tag)
    assert "--time=3" in by_tag  # 90 s, rounded up to minutes, and a minute more
    assert by_tag[-2:] == ["--mem=1G", "/s/r/job.sh"]
    assert "--nodelist=n1" in pinned
    assert not any(arg.startswith(("--nodelist", "--constraint")) for arg in anywhere)
    assert machine.slots == 4096  # Slurm decides how many run
