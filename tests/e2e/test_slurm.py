"""Runs handed to a real Slurm cluster on this host (tests/slurm.py): three
nodes, n1 (features gpu, odd), n2 (cpu, even) and n3 (spare)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchctl.transports.processes import pid_alive
from tests.helpers import (
    blocking_script,
    make_suite,
    run_batchctl,
    stored_batches,
    stored_runs,
    wait_until,
    write_plan,
)
from tests.slurm import (
    SHORT_PARTITION,
    SlurmCluster,
    alive,
    require_slurm,
    start_cluster,
    stop_cluster,
)

ARTIFACTS = (
    "#!/bin/sh\n"
    'echo "ran $BATCHCTL_ITEM on $SLURMD_NODENAME in $(pwd)"\n'
    'printf \'%s\' "$WEIRD" > "$BATCHCTL_ARTIFACTS_DIR/weird.txt"\n'
    'mkdir -p "$BATCHCTL_ARTIFACTS_DIR/nested"\n'
    'echo deep > "$BATCHCTL_ARTIFACTS_DIR/nested/file"\n'
)
WEIRD = 'it\'s a "test" $(touch pwned) ; echo nope'


def items_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in view["items"]}


def fleet_env(
    workdir: Path, cluster: SlurmCluster, extra: str = "", partition: str = "debug"
) -> dict[str, str]:
    shared = workdir / "shared"
    shared.mkdir(exist_ok=True)
    path = workdir / "fleet.yaml"
    path.write_text("machines:\n" + cluster.machine(shared, extra=extra, partition=partition))
    return {"BATCHCTL_FLEET": str(path)}


def jobs_by_run(cluster: SlurmCluster) -> dict[str, list[tuple[str, str]]]:
    """(state, node) of each job Slurm knows, by the run its name names."""
    jobs: dict[str, list[tuple[str, str]]] = {}
    for _, state, node, name in cluster.jobs():
        if name.startswith("batchctl-"):
            jobs.setdefault(name.removeprefix("batchctl-"), []).append((state, node))
    return jobs


def test_a_plan_runs_on_slurm_to_the_right_outcomes_with_logs_and_artifacts(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    env = fleet_env(workdir, slurm_cluster)
    make_suite(workdir / "suites", "report", ARTIFACTS)
    make_suite(workdir / "suites", "bad", "#!/bin/sh\necho failing >&2\nexit 3\n")
    make_suite(workdir / "suites", "slow", "#!/bin/sh\necho started\nexec sleep 60\n")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        f"  - {{name: gpu, dir: suites/report, tag: gpu, env: {{WEIRD: {json.dumps(WEIRD)}}}}}\n"
        "  - {name: pinned, dir: suites/report, machine: n2}\n"
        "  - {name: bad, dir: suites/bad, tag: cpu}\n"
        "  - {name: child, dir: suites/report, tag: cpu, needs: [bad]}\n"
        "  - {name: grandchild, dir: suites/report, tag: cpu, needs: [child]}\n"
        "  - {name: slow, dir: suites/slow, tag: cpu, timeout: 2s}\n",
    )

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    assert result.code == 1, result.stderr
    items = items_of(result.json()["data"]["batch"])
    outcomes = {name: item["outcome"] for name, item in items.items()}
    assert outcomes == {
        "gpu": "passed",
        "pinned": "passed",
        "bad": "failed",
        "child": "skipped",
        "grandchild": "skipped",
        "slow": "timeout",
    }
    assert items["bad"]["run"]["exit_code"] == 3
    assert "failing" in Path(items["bad"]["run"]["log_path"]).read_text()
    assert items["child"]["blame"] == "bad#1"
    assert items["grandchild"]["blame"] == "bad#1"
    assert "started" in Path(items["slow"]["run"]["log_path"]).read_text()
    # Placement: the feature and the pinned node decided where each ran.
    jobs = jobs_by_run(slurm_cluster)
    assert jobs[items["gpu"]["run_id"]] == [("COMPLETED", "n1")]
    assert jobs[items["pinned"]["run_id"]] == [("COMPLETED", "n2")]
    assert jobs[items["slow"]["run_id"]] == [("CANCELLED", "n2")]
    log = Path(items["gpu"]["run"]["log_path"]).read_text()
    assert log.startswith(f"ran gpu on n1 in {workdir / 'shared' / items['gpu']['run_id']}/work")
    artifacts = Path(items["gpu"]["run"]["artifacts_path"])
    assert (artifacts / "weird.txt").read_text() == WEIRD
    assert (artifacts / "nested" / "file").read_text() == "deep\n"
    # Nothing is left in the shared directory once the runs are over.
    assert list((workdir / "shared").iterdir()) == []


def test_a_killed_worker_is_succeeded_by_one_that_adopts_its_jobs(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    env = fleet_env(workdir, slurm_cluster)
    gate = workdir / "gate"
    names = ("a", "b", "c", "d")
    for name in names:
        make_suite(workdir / "suites", name, blocking_script(gate, before=f"{name} ran"))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: {n}, dir: suites/{n}, tag: cpu}}\n" for n in names),
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]

    def worker_pid() -> int | None:
        lease = stored_batches(state_dir)[batch_id].get("lease")
        return lease["pid"] if lease and pid_alive(lease["pid"]) else None

    def submitted() -> int:
        return sum(
            1
            for run in stored_runs(state_dir).values()
            if (Path(state_dir) / "runs" / run["id"] / "slurm_job").exists()
        )

    wait_until(lambda: submitted() == len(names), what="every run to be submitted")
    wait_until(lambda: worker_pid() is not None, what="the worker to hold the lease")
    victim = worker_pid()
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not pid_alive(victim), what="the worker to die")
    gate.touch()  # the jobs end while no worker looks

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 0, final.stderr
    assert {item["outcome"] for item in final.json()["data"]["batch"]["items"]} == {"passed"}
    runs = stored_runs(state_dir)
    assert sorted(run["item"] for run in runs.values()) == sorted(names)
    jobs = jobs_by_run(slurm_cluster)
    # Each run was submitted once: one job carries its token.
    assert Counter(len(jobs[run_id]) for run_id in runs) == Counter({1: len(names)})
    for run in runs.values():
        assert Path(run["log_path"]).read_text().count(" ran") == 1


def test_cancel_leaves_no_job_of_the_batch_in_the_cluster(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    env = fleet_env(workdir, slurm_cluster)
    make_suite(workdir / "suites", "block", blocking_script(workdir / "never", before="started"))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: one, dir: suites/block, tag: cpu}\n"
        "  - {name: two, dir: suites/block, tag: gpu}\n",
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(
        lambda: [run["status"] for run in stored_runs(state_dir).values()] == ["running"] * 2,
        what="both jobs to run",
    )

    cancelled = run_batchctl("cancel", batch_id, "--json", cwd=workdir, env=env, timeout=90)

    assert cancelled.code == 0, cancelled.stderr
    items = items_of(cancelled.json()["data"]["batch"])
    assert {item["outcome"] for item in items.values()} == {"interrupted"}
    runs = stored_runs(state_dir)
    jobs = jobs_by_run(slurm_cluster)
    assert {jobs[run_id][0][0] for run_id in runs} == {"CANCELLED"}


@pytest.mark.slow
def test_a_lost_node_ends_the_run_error_and_the_retry_runs_it_again(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    env = fleet_env(workdir, slurm_cluster)
    gate = workdir / "gate"
    make_suite(workdir / "suites", "block", blocking_script(gate, before="started"))
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: spare, dir: suites/block, machine: n3, retries: 1}\n",
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(
        lambda: any(run["status"] == "running" for run in stored_runs(state_dir).values()),
        what="the run to start on n3",
    )
    slurm_cluster.stop_node("n3")
    try:
        wait_until(
            lambda: any(run["status"] == "error" for run in stored_runs(state_dir).values()),
            timeout=60,
            what="the run on the lost node to end",
        )
    finally:
        slurm_cluster.start_node("n3")
    gate.touch()

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 0, final.stderr
    item = items_of(final.json()["data"]["batch"])["spare"]
    assert (item["outcome"], item["attempt"]) == ("passed", 2)
    first = next(run for run in stored_runs(state_dir).values() if run["attempt"] == 1)
    assert (first["status"], first["error_code"]) == ("error", "node_fail")


def test_machines_shows_the_nodes_and_a_waiting_item_shows_slurms_reason(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    # The cluster has one gpu_lic license: the second job waits for it.
    env = fleet_env(workdir, slurm_cluster, extra="sbatch_args: ['--licenses=gpu_lic:1']")
    gate = workdir / "gate"
    make_suite(workdir / "suites", "block", blocking_script(gate, before="started"))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: first, dir: suites/block, tag: cpu}\n"
        "  - {name: second, dir: suites/block, tag: cpu}\n",
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(
        lambda: (
            sorted((run["status"], run["message"]) for run in stored_runs(state_dir).values())
            == [("pending", "waiting in Slurm: Licenses"), ("running", None)]
        ),
        what="one job to run and the other to wait for the license",
    )

    listing = run_batchctl("machines", "--json", cwd=workdir, env=env)
    status = run_batchctl("status", batch_id, cwd=workdir, env=env)
    gate.touch()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)

    [machine] = listing.json()["data"]["machines"]
    nodes = {node["name"]: node for node in machine["nodes"]}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert nodes["n1"]["features"] == ["gpu", "odd"]
    assert nodes["n2"]["state"] in ("mixed", "allocated")  # the running job is there
    assert "waiting in Slurm: Licenses" in status.stdout
    assert final.code == 0, final.stderr


def test_a_job_slurm_refuses_ends_the_run_error_saying_why(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    env = fleet_env(workdir, slurm_cluster, extra="sbatch_args: ['--partition=nosuch']")
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t, tag: cpu}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    assert result.code == 1, result.stderr
    run = items_of(result.json()["data"]["batch"])["t"]["run"]
    assert (run["status"], run["error_code"]) == ("error", "submit_failed")
    assert "invalid partition" in run["message"].lower()
    assert list((workdir / "shared").iterdir()) == []


def test_a_job_slurm_would_never_start_is_cancelled_and_ends_the_run_error_saying_why(
    workdir: Path, state_dir: Path, slurm_cluster: SlurmCluster
) -> None:
    """A --time over the partition's MaxTime leaves the job pending for
    PartitionTimeLimit for good (EnforcePartLimits=NO, Slurm's default)."""
    env = fleet_env(workdir, slurm_cluster, partition=SHORT_PARTITION)
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir, "version: 1\nentries:\n  - {name: long, dir: suites/t, tag: cpu, timeout: 5m}\n"
    )

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=60)

    assert result.code == 1, result.stderr
    item = items_of(result.json()["data"]["batch"])["long"]
    run = item["run"]
    assert (run["status"], run["error_code"]) == ("error", "slurm_refused")
    assert "PartitionTimeLimit" in run["message"]
    assert jobs_by_run(slurm_cluster)[item["run_id"]] == [("CANCELLED", "")]
    assert list((workdir / "shared").iterdir()) == []


def test_a_slurm_machines_health_check_asks_its_controller(
    workdir: Path, slurm_cluster: SlurmCluster
) -> None:
    """Without a check of its own, a quarantined cluster returns once its
    controller lists the partition's nodes, not merely because this host
    can run `true`."""
    from batchctl.model.fleet import parse_fleet
    from batchctl.transports.health import health_check_argv

    shared = workdir / "shared"
    shared.mkdir()
    for partition, answers in (("debug", True), ("nosuchpartition", False)):
        text = "machines:\n" + slurm_cluster.machine(shared).replace(
            "partition: debug", f"partition: {partition}"
        )
        fleet = parse_fleet(text, "fleet.yaml")
        machine = fleet.machines[0]
        argv = health_check_argv(
            machine, fleet.health_check_of(machine), known_hosts=workdir / "known_hosts"
        )
        assert argv is not None
        # The cluster is found through the machine's slurm_conf alone.
        env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert (done.returncode == 0) is answers, (partition, done.stdout, done.stderr)


def test_stopping_a_cluster_ends_the_steps_of_a_lost_node_and_nothing_else_working_there(
    tmp_path: Path,
) -> None:
    """`stop` ends the job steps a lost node left (and their jobs) by pid,
    and leaves alone another process working in the cluster's directory,
    such as a developer's shell."""
    require_slurm()
    directory = tmp_path / "cluster"
    directory.mkdir()
    bystander = subprocess.Popen(["sleep", "300"], cwd=directory)
    try:
        cluster = start_cluster(directory, "m1")
        job_pid = tmp_path / "job.pid"
        cluster.slurm(
            "sbatch", f"--chdir={tmp_path}", "--wrap", f"echo $$ > {job_pid}; exec sleep 300"
        )
        wait_until(lambda: job_pid.exists() and job_pid.read_text().strip() != "", what="the job")
        job = int(job_pid.read_text())
        cluster.stop_node("m1")  # its job step is left running
        assert alive(job)

        stop_cluster(directory)

        wait_until(lambda: not alive(job), timeout=10, what="the lost node's job to end")
        assert bystander.poll() is None, "a process working in the cluster's directory was killed"
    finally:
        stop_cluster(directory)
        bystander.kill()
        bystander.wait()
