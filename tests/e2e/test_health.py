"""Machine health with real workers, test processes and a real sshd: a
machine whose sshd dies is quarantined and its work goes elsewhere; a
health check over ssh brings it back; the valve keeps most machines in
service when every one of them fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_governance import items_of, ledger_script, lines, started
from tests.helpers import make_suite, run_batchctl, wait_until, write_plan
from tests.sshd import Sshd, free_port


def machines_of(workdir: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = run_batchctl("machines", "--json", cwd=workdir, env=env)
    assert result.code == 0, result.stderr
    return {machine["name"]: machine for machine in result.json()["data"]["machines"]}


def attempts_on(
    workdir: Path, env: dict[str, str], batch_id: str, items: list[str], machine: str
) -> list[dict[str, Any]]:
    """Every attempt of these items that was dispatched to ``machine``."""
    found = []
    for item in items:
        detail = run_batchctl("status", batch_id, item, "--json", cwd=workdir, env=env)
        assert detail.code in (0, 1), detail.stderr
        attempts = detail.json()["data"]["attempts"]
        found += [attempt for attempt in attempts if attempt["machine"] == machine]
    return found


def starts_on(ledger: Path, machine: str) -> list[str]:
    return [item for kind, item, where in lines(ledger) if kind == "start" and where == machine]


@pytest.mark.slow
def test_a_machine_whose_sshd_dies_is_quarantined_and_a_health_check_brings_it_back(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    ledger, gates = workdir / "ledger", workdir / "gates"
    gates.mkdir()
    (workdir / "fleet.yaml").write_text(
        "health: {failures: 2, check_every: 1s, check_every_max: 2s, retry_elsewhere: 60s}\n"
        "machines:\n"
        "  - {name: here, transport: local, tags: [linux], slots: 1}\n"
        + sshd.machine("remote-1", tags="[linux]", slots=1)
    )
    make_suite(workdir / "suites", "t", ledger_script(ledger, gates))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(
            f"  - {{name: i{n}, dir: suites/t, tag: linux, retries: 2, "
            "retry_on: [error, interrupted]}\n"
            for n in range(7)
        ),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml"), "BATCHCTL_RETRY_BASE": "0.2"}
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(lambda: len(started(ledger)) == 2, what="a run on each machine")

    sshd.kill()
    wait_until(
        lambda: machines_of(workdir, env)["remote-1"]["state"] == "quarantined",
        what="the machine without sshd to be quarantined",
    )
    remote = machines_of(workdir, env)["remote-1"]
    quarantine = remote["health"]["quarantine"]
    assert (
        "2 runs of different items in a row ended with infrastructure errors"
        in (quarantine["reason"])
    )
    assert "ssh_connect" in quarantine["reason"]
    table = run_batchctl("machines", cwd=workdir, env=env).stdout
    assert "quarantined: 2 runs of different items" in table
    # Items wait for the healthy machine, and say why the other takes none.
    waiting = items_of(run_batchctl("status", batch_id, "--json", cwd=workdir, env=env))
    queued = [item for item in waiting.values() if item["state"] == "queued"]
    assert queued
    assert {item["reason_code"] for item in queued} <= {"busy", "backoff"}
    assert any("1 quarantined" in (item["reason"] or "") for item in queued)

    # The queued work goes to the healthy machine, one item after another,
    # while the health check keeps failing.
    for _ in range(3):
        (gates / starts_on(ledger, "here")[-1]).touch()
        count = len(starts_on(ledger, "here"))
        wait_until(
            lambda count=count: len(starts_on(ledger, "here")) > count,  # type: ignore[misc]
            what="the healthy machine to take the next queued item",
        )
    remote = machines_of(workdir, env)["remote-1"]
    assert remote["state"] == "quarantined"
    assert remote["health"]["quarantine"]["checks"] >= 1
    assert "255" in remote["health"]["quarantine"]["last_check"]
    before = len(starts_on(ledger, "remote-1"))

    # sshd is back: the next health check passes and the machine takes work.
    sshd.restart()
    wait_until(
        lambda: machines_of(workdir, env)["remote-1"]["state"] != "quarantined",
        what="the health check to bring the machine back",
    )
    assert machines_of(workdir, env)["remote-1"]["health"] is None
    wait_until(
        lambda: len(starts_on(ledger, "remote-1")) > before,
        what="the machine back in service to take a queued item",
    )
    for n in range(7):
        (gates / f"i{n}").touch()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)
    assert final.code == 0, final.stderr
    assert {item["outcome"] for item in items_of(final).values()} == {"passed"}
    there = attempts_on(workdir, env, batch_id, [f"i{n}" for n in range(7)], "remote-1")
    failed = [a for a in there if a["status"] in ("error", "interrupted")]
    # Two failures quarantine it; a third may have been dispatched in the
    # instant between the second's end and its count, never more.
    assert 2 <= len(failed) <= 3, failed
    assert any(a["status"] == "succeeded" for a in there)
    log = (state_dir / "workers" / f"{batch_id}.log").read_text()
    assert "quarantined remote-1" in log
    assert "remote-1 passed its health check; back in service" in log


def test_the_valve_keeps_most_machines_in_service_when_every_machine_fails(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    """A fault common to every machine (here: the server they all go through
    is gone) quarantines at most max_quarantined of them; the others keep
    running the batch, which ends rather than waiting for machines."""
    (workdir / "fleet.yaml").write_text(
        "health: {failures: 1, max_quarantined: 0.5, check_every: 1s}\n"
        "machines:\n" + "".join(sshd.machine(f"r{n}", tags="[linux]", slots=1) for n in range(1, 5))
    )
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: i{n}, dir: suites/t, tag: linux}}\n" for n in range(8)),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    sshd.kill()

    final = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 1, final.stderr
    items = items_of(final)
    assert {item["outcome"] for item in items.values()} == {"error"}
    machines = machines_of(workdir, env)
    out = sorted(name for name, m in machines.items() if m["state"] == "quarantined")
    assert len(out) == 2  # half of four
    kept = [m for name, m in machines.items() if name not in out]
    assert all(m["health"]["failures"] >= 1 for m in kept)
    assert all("max_quarantined 0.5 allows 2" in m["health"]["held_back"] for m in kept)
    used = {item["machine"] for item in items.values()}
    assert used - set(out), "the machines kept in service ran items"

    # An operator ends a quarantine by hand.
    resumed = run_batchctl("machines", "resume", out[0], "--json", cwd=workdir, env=env)
    assert (resumed.code, resumed.json()["data"]["unquarantined"]) == (0, True), resumed.stderr
    assert machines_of(workdir, env)[out[0]]["state"] == "idle"


def test_a_machine_a_run_could_not_reach_is_probed_and_quarantined_without_more_runs(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    """A run that ends ssh_connect makes its worker probe the machine at
    once, giving it nothing meanwhile: a host that is down is taken out after
    one run, not after `failures` of them."""
    dead = sshd.machine("remote-1", tags="[linux]", slots=1).replace(
        f"port: {sshd.port}", f"port: {free_port()}"
    )
    (workdir / "fleet.yaml").write_text(
        "health: {failures: 8, check_every: 1m}\n"
        "machines:\n"
        "  - {name: here, transport: local, tags: [linux], slots: 1}\n" + dead
    )
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(
            f"  - {{name: i{n}, dir: suites/t, tag: linux, retries: 1, retry_on: [error]}}\n"
            for n in range(10)
        ),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml"), "BATCHCTL_RETRY_BASE": "0.2"}

    final = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 0, final.stderr
    batch_id = final.json()["data"]["batch"]["id"]
    there = attempts_on(workdir, env, batch_id, [f"i{n}" for n in range(10)], "remote-1")
    assert 1 <= len(there) <= 2, there
    assert {attempt["error_code"] for attempt in there} == {"ssh_connect"}
    remote = machines_of(workdir, env)["remote-1"]
    assert remote["state"] == "quarantined"
    reason = remote["health"]["quarantine"]["reason"]
    assert reason.startswith("its connectivity probe failed (health check exited 255: ")
