"""Simulated machines through the whole engine: real CLI, real worker, real
state files, no test processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from batchctl.model.fleet import parse_fleet
from batchctl.model.models import RunStatus
from batchctl.transports.sim import simulate
from tests.helpers import (
    make_suite,
    run_batchctl,
    stored_batches,
    stored_runs,
    wait_until,
    write_plan,
)


def sim_fleet(workdir: Path, machines: int, extra: str = "") -> Path:
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        "machines:\n"
        + "".join(
            f"  - {{name: sim{n:04d}, transport: sim, tags: [local], slots: 1{extra}}}\n"
            for n in range(machines)
        )
    )
    return fleet


def plan_of(workdir: Path, items: int) -> None:
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: t{n:03d}, dir: suites/t}}\n" for n in range(items)),
    )


def test_a_bare_simulated_machine_succeeds_at_once() -> None:
    fleet = parse_fleet(
        "machines:\n  - {name: sim0001, transport: sim, tags: [local], slots: 1}\n", "f"
    )
    [machine] = fleet.machines
    outcome = simulate(machine, "any-run")
    assert (outcome.seconds, outcome.status) == (0.0, RunStatus.SUCCEEDED)


def test_a_plan_rehearsed_on_simulated_machines_gets_the_drawn_outcomes(workdir: Path) -> None:
    plan_of(workdir, 40)
    fleet = sim_fleet(workdir, 4, ", duration: 10ms..50ms, outcomes: {failed: 0.3}")

    result = run_batchctl(
        "run", "plan.yaml", "--fleet", str(fleet), "--wait", "--json", cwd=workdir
    )

    assert result.code == 1  # some items were drawn to fail
    batch = result.json()["data"]["batch"]
    machines = {m.name: m for m in parse_fleet(fleet.read_text(), "f").machines}
    expected = {
        item["name"]: simulate(machines[item["machine"]], item["run_id"]).status.value
        for item in batch["items"]
    }
    assert {item["name"]: item["run"]["status"] for item in batch["items"]} == expected
    assert set(expected.values()) == {"succeeded", "failed"}


def test_a_killed_worker_loses_no_simulated_run(workdir: Path, state_dir: Path) -> None:
    plan_of(workdir, 30)
    fleet = sim_fleet(workdir, 3, ", duration: 200ms")
    batch_id = run_batchctl(
        "run", "plan.yaml", "--fleet", str(fleet), "--json", cwd=workdir
    ).json()["data"]["batch"]["id"]

    def worker_pid() -> int | None:
        lease = stored_batches(state_dir)[batch_id].get("lease")
        holder = lease.get("holder") if lease else None
        return holder["pid"] if holder and holder["pid"] != os.getpid() else None

    wait_until(lambda: len(stored_runs(state_dir)) >= 6, what="two waves of runs")
    pid = worker_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, timeout=120)

    assert final.code == 0, final.stderr
    runs = stored_runs(state_dir).values()
    assert sorted(run["item"] for run in runs) == [f"t{n:03d}" for n in range(30)]  # once each
    assert all(run["status"] == "succeeded" for run in runs)
