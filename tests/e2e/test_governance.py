"""Fleet governance with real workers and test processes: drained machines,
tag limits and a batch's own cap. Test scripts append their start and end to
a ledger and block on a file per item, so the test decides when runs end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import CliResult, make_suite, run_batchctl, wait_until, write_plan


def ledger_script(ledger: Path, gates: Path | None = None) -> str:
    """Appends ``start ITEM MACHINE`` and ``end ITEM MACHINE`` to ``ledger``;
    with ``gates``, waits in between until ``gates/ITEM`` exists."""
    wait = (
        f'while [ ! -e "{gates}/$BATCHCTL_ITEM" ]; do sleep 0.05; done\n'
        if gates
        else "sleep 0.2\n"
    )
    return (
        "#!/bin/sh\n"
        f'echo "start $BATCHCTL_ITEM $BATCHCTL_MACHINE" >> "{ledger}"\n'
        + wait
        + f'echo "end $BATCHCTL_ITEM $BATCHCTL_MACHINE" >> "{ledger}"\n'
    )


def lines(ledger: Path) -> list[list[str]]:
    return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []


def started(ledger: Path) -> dict[str, str]:
    """Item -> machine, of every run that started."""
    return {item: machine for kind, item, machine in lines(ledger) if kind == "start"}


def most_at_once(ledger: Path, machines: set[str] | None = None) -> int:
    running = most = 0
    for kind, _, machine in lines(ledger):
        if machines is not None and machine not in machines:
            continue
        running += 1 if kind == "start" else -1
        most = max(most, running)
    return most


def items_of(result: CliResult) -> dict[str, Any]:
    assert result.code in (0, 1), result.stderr
    return {item["name"]: item for item in result.json()["data"]["batch"]["items"]}


def test_a_drained_machine_finishes_its_run_takes_nothing_new_and_resumes(
    workdir: Path, state_dir: Path
) -> None:
    ledger, gates = workdir / "ledger", workdir / "gates"
    gates.mkdir()
    (workdir / "fleet.yaml").write_text(
        "machines:\n"
        "  - {name: m1, transport: local, tags: [local], slots: 1}\n"
        "  - {name: m2, transport: local, tags: [local], slots: 1}\n"
    )
    make_suite(workdir / "suites", "t", ledger_script(ledger, gates))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: i{n}, dir: suites/t}}\n" for n in range(4)),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(lambda: len(started(ledger)) == 2, what="a run on each machine")
    on_m2 = next(item for item, machine in started(ledger).items() if machine == "m2")
    on_m1 = next(item for item, machine in started(ledger).items() if machine == "m1")

    drained = run_batchctl(
        "machines", "drain", "m2", "--reason", "disk swap", "--json", cwd=workdir, env=env
    )
    assert drained.code == 0, drained.stderr
    assert drained.json()["data"]["running"] == 1
    listing = run_batchctl("machines", "--json", cwd=workdir, env=env).json()["data"]["machines"]
    m2 = next(machine for machine in listing if machine["name"] == "m2")
    assert (m2["state"], m2["drain"]["reason"], len(m2["runs"])) == ("drained", "disk swap", 1)
    human = run_batchctl("machines", cwd=workdir, env=env).stdout
    assert "drained: disk swap" in human

    # m2's run goes on to its end; the free slot of a drained machine stays empty.
    (gates / on_m2).touch()
    wait_until(
        lambda: (
            items_of(run_batchctl("status", batch_id, "--json", cwd=workdir, env=env))[on_m2][
                "outcome"
            ]
            == "passed"
        ),
        what="the drained machine's run to end",
    )
    waiting = items_of(run_batchctl("status", batch_id, "--json", cwd=workdir, env=env))
    queued = sorted(name for name, item in waiting.items() if item["state"] == "queued")
    assert len(queued) == 2
    assert {waiting[name]["reason_code"] for name in queued} == {"busy"}
    assert "1 drained" in waiting[queued[0]]["reason"]
    assert len(started(ledger)) == 2

    # m1 frees its slot: the next item lands there, never on m2.
    (gates / on_m1).touch()
    wait_until(lambda: len(started(ledger)) == 3, what="the next run on m1")
    third = queued[0]
    assert started(ledger)[third] == "m1"

    resumed = run_batchctl("machines", "resume", "m2", "--json", cwd=workdir, env=env)
    assert (resumed.code, resumed.json()["data"]["changed"]) == (0, True)
    wait_until(lambda: len(started(ledger)) == 4, what="the resumed machine to take work")
    assert started(ledger)[queued[1]] == "m2"

    for name in queued:
        (gates / name).touch()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)
    assert final.code == 0, final.stderr
    assert {item["outcome"] for item in items_of(final).values()} == {"passed"}


def test_a_batch_whose_only_machine_is_drained_waits_then_runs_after_resume(
    workdir: Path, state_dir: Path
) -> None:
    (workdir / "fleet.yaml").write_text(
        "machines:\n"
        "  - {name: cpu-1, transport: local, tags: [local], slots: 2}\n"
        "  - {name: gpu-1, transport: local, tags: [gpu], slots: 2}\n"
    )
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: plain, dir: suites/t}\n"
        "  - {name: shader, dir: suites/t, tag: gpu}\n",
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    drained = run_batchctl(
        "machines", "drain", "gpu-1", "--reason", "driver update", cwd=workdir, env=env
    )
    assert drained.code == 0, drained.stderr
    assert "drained gpu-1" in drained.stdout

    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(
        lambda: (
            items_of(run_batchctl("status", batch_id, "--json", cwd=workdir, env=env))["plain"][
                "outcome"
            ]
            == "passed"
        ),
        what="the item on the other machine",
    )
    shader = items_of(run_batchctl("status", batch_id, "--json", cwd=workdir, env=env))["shader"]
    assert (shader["state"], shader["reason_code"]) == ("queued", "drained")
    assert shader["reason"] == "every machine matching tag:gpu is drained (gpu-1: driver update)"

    assert run_batchctl("machines", "resume", "gpu-1", cwd=workdir, env=env).code == 0
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)
    assert final.code == 0, final.stderr
    assert items_of(final)["shader"]["machine"] == "gpu-1"


def test_a_tag_limit_holds_across_batches(workdir: Path, state_dir: Path) -> None:
    ledger = workdir / "ledger"
    (workdir / "fleet.yaml").write_text(
        "limits: {gpu: 1}\n"
        "machines:\n"
        "  - {name: g1, transport: local, tags: [gpu], slots: 2}\n"
        "  - {name: g2, transport: local, tags: [gpu], slots: 2}\n"
    )
    make_suite(workdir / "suites", "t", ledger_script(ledger))
    for plan in ("a", "b"):
        write_plan(
            workdir,
            "version: 1\nentries:\n"
            + "".join(f"  - {{name: {plan}{n}, dir: suites/t, tag: gpu}}\n" for n in range(3)),
            name=f"{plan}.yaml",
        )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    ids = [
        run_batchctl("run", plan, "--json", cwd=workdir, env=env).json()["data"]["batch"]["id"]
        for plan in ("a.yaml", "b.yaml")
    ]
    for batch_id in ids:
        final = run_batchctl(
            "status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120
        )
        assert final.code == 0, final.stderr
    assert len(started(ledger)) == 6
    assert most_at_once(ledger) == 1


def test_max_parallel_runs_a_batch_one_at_a_time(workdir: Path, state_dir: Path) -> None:
    ledger = workdir / "ledger"
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: big, transport: local, tags: [local], slots: 4}\n"
    )
    make_suite(workdir / "suites", "t", ledger_script(ledger))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: i{n}, dir: suites/t}}\n" for n in range(4)),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}

    final = run_batchctl(
        "run", "plan.yaml", "--max-parallel", "1", "--wait", "--json", cwd=workdir, env=env
    )

    assert final.code == 0, final.stderr
    assert final.json()["data"]["batch"]["max_parallel"] == 1
    assert len(started(ledger)) == 4
    assert most_at_once(ledger) == 1


def test_a_damaged_drain_file_stops_no_batch_and_is_refused_by_drain(
    workdir: Path, state_dir: Path
) -> None:
    """Batches go on (with the drains last read: none here) while the file
    is damaged; drain and resume refuse it, exit 4, and leave it as it is."""
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")
    state_dir.mkdir(parents=True, exist_ok=True)
    damaged = state_dir / "machines.json"
    damaged.write_text("{not json")

    ran = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    drained = run_batchctl("machines", "drain", "local", "--reason", "x", cwd=workdir)

    assert ran.code == 0, ran.stderr
    assert items_of(ran)["t"]["outcome"] == "passed"
    assert drained.code == 4, drained.stderr
    assert "Traceback" not in drained.stderr
    assert damaged.read_text() == "{not json"
