"""Following one item, the log of an item that never ran, and choosing
batches to list."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import blocking_script, make_suite, run_batchctl, write_plan

PLAN = """
version: 1
entries:
  - {name: held, dir: suites/held}
  - {name: broken, dir: suites/broken}
  - {name: after-broken, dir: suites/held, needs: [broken]}
"""


def held_batch(workdir: Path, gate: Path, staging: str = "s") -> str:
    make_suite(workdir / "suites", "held", blocking_script(gate))
    make_suite(workdir / "suites", "broken", "#!/bin/sh\necho broken\nexit 3\n")
    write_plan(workdir, PLAN)
    ran = run_batchctl("run", "plan.yaml", "--staging", staging, "--json", cwd=workdir)
    assert ran.code == 0, ran.stderr
    batch_id: str = ran.json()["data"]["batch"]["id"]
    return batch_id


def test_status_of_an_item_with_wait_follows_that_item_and_exits_by_it(workdir: Path) -> None:
    gate = workdir / "gate"
    batch_id = held_batch(workdir, gate)

    broken = run_batchctl("status", batch_id, "broken", "--wait", "--json", cwd=workdir)

    # It returned while the batch goes on: its held item waits at the gate.
    assert (broken.code, broken.json()["data"]["outcome"]) == (1, "failed"), broken.stderr
    batch = run_batchctl("status", batch_id, "--json", cwd=workdir).json()["data"]["batch"]
    assert batch["done"] is False
    gate.touch()
    held = run_batchctl("status", batch_id, "held", "--wait", "--json", cwd=workdir)
    assert (held.code, held.json()["data"]["outcome"]) == (0, "passed")
    assert run_batchctl("status", batch_id, "--wait", cwd=workdir).code == 1


def test_logs_of_an_item_that_never_ran_say_why(workdir: Path) -> None:
    gate = workdir / "gate"
    batch_id = held_batch(workdir, gate)
    assert run_batchctl("status", batch_id, "broken", "--wait", cwd=workdir).code == 1

    skipped = run_batchctl("logs", batch_id, "after-broken", "--json", cwd=workdir)

    assert skipped.code == 3
    message = skipped.error()["error"]["message"]
    assert "was skipped (" in message
    assert "because of broken#1" in message
    assert "it never ran" in message
    gate.touch()
    assert run_batchctl("status", batch_id, "--wait", cwd=workdir).code == 1


def test_list_chooses_by_staging_state_and_number(workdir: Path) -> None:
    gate = workdir / "gate"
    done = held_batch(workdir, workdir / "open-gate", staging="finished")
    (workdir / "open-gate").touch()
    assert run_batchctl("status", done, "--wait", cwd=workdir).code == 1
    running = held_batch(workdir, gate, staging="ongoing")
    cancelled = held_batch(workdir, gate, staging="stopped")
    assert run_batchctl("cancel", cancelled, cwd=workdir).code == 0

    def listed(*options: str) -> list[tuple[str, bool]]:
        answer = run_batchctl("list", *options, "--json", cwd=workdir)
        assert answer.code == 0, answer.stderr
        return [(batch["id"], batch["cancelled"]) for batch in answer.json()["data"]["batches"]]

    assert listed() == [(cancelled, True), (running, False), (done, False)]
    assert listed("--state", "running") == [(running, False)]
    assert listed("--state", "cancelled") == [(cancelled, True)]
    assert listed("--state", "done") == [(done, False)]
    assert listed("--staging", "finished") == [(done, False)]
    assert listed("--limit", "2") == [(cancelled, True), (running, False)]
    table = run_batchctl("list", "--state", "cancelled", cwd=workdir).stdout
    assert "cancelled" in table.splitlines()[1].split()
    wrong = run_batchctl("list", "--state", "finished", "--json", cwd=workdir)
    assert wrong.code == 2
    assert "running, done, cancelled" in wrong.error()["error"]["message"]

    gate.touch()
    for batch_id in (running, cancelled):
        assert run_batchctl("status", batch_id, "--wait", cwd=workdir).code == 1
