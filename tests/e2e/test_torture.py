"""Kill torture: workers and run supervisors SIGKILLed at random moments while
a 300-item batch runs on this host. Nothing may be lost, nothing run twice,
nothing left running."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    make_suite,
    processes_of,
    run_batchctl,
    stored_batches,
    stored_runs,
    wait_until,
    write_plan,
)

ITEMS = 300
WORKER_KILLS = 30
SUPERVISOR_KILLS = 10


def worker_pid(state_dir: Path, batch_id: str) -> int | None:
    lease = stored_batches(state_dir)[batch_id].get("lease")
    holder = (lease or {}).get("holder")
    return int(holder["pid"]) if holder else None


def supervisors(state_dir: Path) -> list[int]:
    """Run wrappers of this test (their command line names the run directory)."""
    found = []
    for pid in processes_of(state_dir):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"batchctl-run" in cmdline:
                found.append(pid)
    return found


def strike_a_supervisor(state_dir: Path, draw: random.Random) -> bool:
    """SIGKILL one run wrapper, at whatever point it is (before its claim,
    during its test, writing its exit status). False if none is there."""
    wrappers = supervisors(state_dir)
    if not wrappers:
        return False
    try:
        os.kill(draw.choice(wrappers), signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_killing_workers_and_supervisors_loses_and_repeats_nothing(
    workdir: Path, state_dir: Path
) -> None:
    seed = random.randrange(1 << 30)
    draw = random.Random(seed)
    ledger = workdir / "ledger"
    make_suite(
        workdir / "suites",
        "t",
        f'#!/bin/sh\necho "$BATCHCTL_ITEM $BATCHCTL_ATTEMPT" >> {ledger}\nsleep 0.2\n',
    )
    # 300 x 0.2 s on 2 slots: the batch outlasts the 30 rounds of killing.
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: box, transport: local, tags: [local], slots: 2}\n"
    )
    write_plan(
        workdir,
        "version: 1\ndefaults: {retries: 10}\nentries:\n"
        + "".join(f"  - {{name: t{n:03d}, dir: suites/t}}\n" for n in range(ITEMS)),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    started = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env)
    assert started.code == 0, started.stderr
    batch_id = started.json()["data"]["batch"]["id"]

    supervisor_kills = worker_kills = 0
    for round_number in range(WORKER_KILLS):
        wait_until(
            lambda: (worker_pid(state_dir, batch_id) or 0) not in (0, os.getpid()),
            what="a worker to hold the batch",
        )
        # A random moment to strike: the point of the torture, not a wait.
        time.sleep(draw.uniform(0.0, 0.3))
        if round_number % 3 == 0:
            wait_until(lambda: strike_a_supervisor(state_dir, draw), what="a run in flight")
            supervisor_kills += 1
        pid = worker_pid(state_dir, batch_id)
        if pid is not None and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                worker_kills += 1
        # Whoever looks next takes the batch over with a fresh worker.
        assert run_batchctl("status", batch_id, "--json", cwd=workdir, env=env).code == 0

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=600)

    items = final.json()["data"]["batch"]["items"] if final.stdout else []
    not_passed = [item for item in items if item["outcome"] != "passed"]
    assert final.code == 0, (seed, final.code, final.stderr[-1000:], not_passed[:5])
    assert len(items) == ITEMS
    assert {item["outcome"] for item in items} == {"passed"}, seed
    executions = Counter(tuple(line.split()) for line in ledger.read_text().splitlines())
    twice = [attempt for attempt, count in executions.items() if count > 1]
    assert twice == [], (seed, twice)
    for item in items:  # the attempt that passed is the one the ledger saw
        assert executions[(item["name"], str(item["attempt"]))] == 1, (seed, item)
    runs = stored_runs(state_dir).values()
    assert all(run["status"] not in ("pending", "running") for run in runs), seed
    assert (worker_kills, supervisor_kills) == (WORKER_KILLS, SUPERVISOR_KILLS), seed
    wait_until(lambda: not supervisors(state_dir), what="every run wrapper to be gone")
    wait_until(
        lambda: (
            not any(
                str(Path(f"/proc/{pid}/cwd").readlink()).startswith(str(state_dir))
                for pid in processes_of(state_dir)
                if Path(f"/proc/{pid}").exists()
            )
        ),
        what="no test process left",
    )
