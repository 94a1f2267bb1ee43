"""logs: one attempt, the last lines, and following an item across its
retries."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import batchctl_process, make_suite, read_until, run_batchctl, write_plan

# Attempt 1 says so, waits for the gate and fails; attempt 2 passes.
FLAKY = """#!/bin/sh
echo "attempt $BATCHCTL_ATTEMPT started"
if [ "$BATCHCTL_ATTEMPT" -ge 2 ]; then echo "second time lucky"; exit 0; fi
while [ ! -e '{gate}' ]; do sleep 0.05; done
echo one; echo two; echo three
exit 1
"""


def flaky_batch(workdir: Path, gate: Path) -> str:
    make_suite(workdir / "suites", "flaky", FLAKY.format(gate=gate))
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: flaky, dir: suites/flaky, retries: 1, "
        "retry_on: [failed]}\n",
    )
    ran = run_batchctl("run", "plan.yaml", "--json", cwd=workdir)
    assert ran.code == 0, ran.stderr
    batch_id: str = ran.json()["data"]["batch"]["id"]
    return batch_id


def test_follow_goes_on_to_the_next_attempt(workdir: Path) -> None:
    gate = workdir / "gate"
    batch_id = flaky_batch(workdir, gate)
    with batchctl_process("logs", batch_id, "flaky", "--follow", cwd=workdir) as follower:
        seen = read_until(follower, b"attempt 1 started")
        gate.touch()
        rest, errors = follower.communicate(timeout=60)

    assert follower.returncode == 0, errors
    assert (seen + rest).decode().splitlines() == [
        "attempt 1 started",
        "one",
        "two",
        "three",
        "==> attempt 2 <==",
        "attempt 2 started",
        "second time lucky",
    ]


def test_one_attempt_and_the_last_lines(workdir: Path) -> None:
    gate = workdir / "gate"
    gate.touch()
    batch_id = flaky_batch(workdir, gate)
    assert run_batchctl("status", batch_id, "--wait", cwd=workdir).code == 0

    first = run_batchctl("logs", batch_id, "flaky", "--attempt", "1", cwd=workdir)
    last_two = run_batchctl("logs", batch_id, "flaky", "--attempt", "1", "--tail", "2")
    latest = run_batchctl("logs", batch_id, "flaky", "--tail", "1", "--json", cwd=workdir)
    missing = run_batchctl("logs", batch_id, "flaky", "--attempt", "3", "--json", cwd=workdir)

    assert first.stdout == "attempt 1 started\none\ntwo\nthree\n"
    assert last_two.stdout == "two\nthree\n"
    assert (latest.json()["data"]["attempt"], latest.json()["data"]["output"]) == (
        2,
        "second time lucky\n",
    )
    assert missing.code == 3
    assert "no attempt 3 (attempts: 1, 2)" in missing.error()["error"]["message"]
