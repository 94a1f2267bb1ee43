"""Whole-CLI tests with real workers, executors and test processes."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from batchctl.transports.processes import group_alive, pid_alive
from tests.helpers import (
    batchctl_process,
    blocking_script,
    make_suite,
    processes_of,
    read_until,
    run_batchctl,
    run_pgid,
    stored_batches,
    stored_runs,
    wait_until,
    write_plan,
)

ARTIFACT_SCRIPT = (
    "#!/bin/sh\n"
    'echo "output of $BATCHCTL_ITEM attempt $BATCHCTL_ATTEMPT on $BATCHCTL_MACHINE"\n'
    'echo "$BATCHCTL_STAGING" > "$BATCHCTL_ARTIFACTS_DIR/staging.txt"\n'
)
FAILING_SCRIPT = "#!/bin/sh\necho 'about to fail' >&2\nexit 3\n"


def runs_json(state_dir: Path) -> dict[str, Any]:
    """Every run, with the process group its supervisor recorded."""
    return {
        run_id: {**run, "pgid": run_pgid(state_dir, run_id)}
        for run_id, run in stored_runs(state_dir).items()
    }


def batch_json(state_dir: Path, batch_id: str) -> dict[str, Any]:
    batch: dict[str, Any] = stored_batches(state_dir)[batch_id]
    return batch


def test_passing_and_failing_items_give_outcomes_exit_codes_logs_and_artifacts(
    workdir: Path, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "good", ARTIFACT_SCRIPT)
    make_suite(workdir / "suites", "bad", FAILING_SCRIPT)
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - {name: good, dir: suites/good}
          - {name: bad, dir: suites/bad}
          - {name: after-bad, dir: suites/good, needs: [bad]}
        """,
    )

    result = run_batchctl(
        "run", "plan.yaml", "--staging", "build-7", "--wait", "--json", cwd=workdir
    )

    assert result.code == 1, result.stderr
    batch = result.json()["data"]["batch"]
    items = {item["name"]: item for item in batch["items"]}
    assert batch["done"] is True
    assert {name: item["outcome"] for name, item in items.items()} == {
        "good": "passed",
        "bad": "failed",
        "after-bad": "skipped",
    }
    assert items["bad"]["run"]["exit_code"] == 3
    assert (items["after-bad"]["error_code"], items["after-bad"]["blame"]) == (
        "dep_failed",
        "bad#1",
    )

    good_run = items["good"]["run"]
    run_dir = state_dir / "runs" / items["good"]["run_id"]
    assert good_run["log_path"] == str(run_dir / "output.log")
    assert "output of good attempt 1 on local" in (run_dir / "output.log").read_text()
    assert (run_dir / "artifacts" / "staging.txt").read_text().strip() == "build-7"
    assert "about to fail" in Path(items["bad"]["run"]["log_path"]).read_text()

    logs = run_batchctl("logs", batch["id"], "good", cwd=workdir)
    assert logs.code == 0
    assert "output of good attempt 1 on local" in logs.stdout

    again = run_batchctl("status", batch["id"], "--wait", "--quiet", cwd=workdir)
    assert again.code == 1


def test_all_passing_batch_exits_0_and_worker_is_gone(workdir: Path, state_dir: Path) -> None:
    for name in ("a", "b", "c"):
        make_suite(workdir / "suites", name, ARTIFACT_SCRIPT)
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: a, dir: suites/a}\n"
        "  - {name: b, dir: suites/b, needs: [a]}\n  - {name: c, dir: suites/c, needs: [b]}\n",
    )

    result = run_batchctl("run", "plan.yaml", "--wait", cwd=workdir)

    assert result.code == 0, result.stderr
    assert "3 passed" in result.stdout
    wait_until(lambda: not processes_of(state_dir), timeout=20, what="the worker to exit")


def test_logs_follow_shows_output_while_the_run_is_going(workdir: Path, state_dir: Path) -> None:
    release = workdir / "release"
    make_suite(
        workdir / "suites", "slow", blocking_script(release, before="first line", after="last line")
    )
    write_plan(workdir, "version: 1\nentries:\n  - {name: slow, dir: suites/slow}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir).json()["data"]["batch"]["id"]

    with batchctl_process("logs", batch_id, "slow", "--follow", cwd=workdir) as follower:
        assert read_until(follower, b"first line\n").strip() == b"first line"
        status = run_batchctl("status", batch_id, "--json", cwd=workdir).json()["data"]["batch"]
        assert status["items"][0]["outcome"] == "running"  # still going while we read

        release.touch()
        rest, errors = follower.communicate(timeout=30)
    assert follower.returncode == 0, errors
    assert rest.strip() == b"last line"


def test_cancel_leaves_no_process_of_the_batch_alive(workdir: Path, state_dir: Path) -> None:
    never = workdir / "never"
    # The entrypoint starts children in its group, one of which ignores TERM.
    script = (
        "#!/bin/sh\n"
        "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' &\n"
        "sleep 300 &\n" + blocking_script(never).split("\n", 1)[1]
    )
    make_suite(workdir / "suites", "long", script)
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: one, dir: suites/long}\n  - {name: two, dir: suites/long}\n"
        "  - {name: later, dir: suites/long, needs: [one]}\n",
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir).json()["data"]["batch"]["id"]
    wait_until(
        lambda: sum(1 for r in runs_json(state_dir).values() if r.get("pgid")) == 2,
        what="both runs to start",
    )
    pgids = [run["pgid"] for run in runs_json(state_dir).values()]
    assert all(group_alive(pgid) for pgid in pgids)

    cancelled = run_batchctl("cancel", batch_id, "--json", cwd=workdir)

    assert cancelled.code == 0, cancelled.stderr
    view = cancelled.json()["data"]["batch"]
    assert view["cancelled"] is True
    assert {item["name"]: item["outcome"] for item in view["items"]} == {
        "one": "interrupted",
        "two": "interrupted",
        "later": "skipped",
    }
    assert view["items"][2]["error_code"] == "cancelled"
    assert not any(group_alive(pgid) for pgid in pgids)
    wait_until(lambda: not processes_of(state_dir), timeout=20, what="every batch process to exit")


def test_killed_worker_is_taken_over_and_the_batch_completes(
    workdir: Path, state_dir: Path
) -> None:
    gate = workdir / "gate"
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: solo, transport: local, tags: [local], slots: 1}\n"
    )
    for name in ("a", "b", "c", "d"):
        make_suite(workdir / "suites", name, blocking_script(gate, before=f"{name} ran"))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: {n}, dir: suites/{n}}}\n" for n in ("a", "b", "c", "d")),
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]

    def worker_pid() -> int | None:
        lease = batch_json(state_dir, batch_id).get("lease")
        return lease["pid"] if lease and pid_alive(lease["pid"]) else None

    wait_until(lambda: worker_pid() is not None, what="the worker to hold the lease")
    victim = worker_pid()
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not pid_alive(victim), what="the worker to die")
    gate.touch()  # let the runs finish while no worker is alive

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 0, final.stderr
    view = final.json()["data"]["batch"]
    assert {item["outcome"] for item in view["items"]} == {"passed"}
    runs = runs_json(state_dir)
    attempts = [(run["item"], run["attempt"]) for run in runs.values()]
    assert sorted(attempts) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]  # none ran twice
    assert all(run["status"] == "succeeded" for run in runs.values())
    for run in runs.values():
        assert Path(run["log_path"]).read_text().count(" ran") == 1
    assert batch_json(state_dir, batch_id)["lease"] is None or not pid_alive(
        batch_json(state_dir, batch_id)["lease"]["pid"]
    )


def test_the_slot_a_run_started_before_the_worker_frees_is_used_at_once(
    workdir: Path, state_dir: Path
) -> None:
    """The first run is started by `run` itself, before the worker exists;
    the worker is woken by that run's end too, not only by its next tick
    (set to a minute here)."""
    gate = workdir / "gate"
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: solo, transport: local, tags: [local], slots: 1}\n"
    )
    make_suite(workdir / "suites", "first", blocking_script(gate))
    make_suite(workdir / "suites", "second")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: first, dir: suites/first}\n"
        "  - {name: second, dir: suites/second}\n",
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml"), "BATCHCTL_TICK": "60"}
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    log = state_dir / "workers" / f"{batch_id}.log"
    wait_until(lambda: log.exists() and "holds batch" in log.read_text(), what="the worker")
    gate.touch()

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=30)

    assert final.code == 0, final.stderr
    assert [item["outcome"] for item in final.json()["data"]["batch"]["items"]] == [
        "passed",
        "passed",
    ]


def test_killed_executor_is_interrupted_and_its_test_process_terminated(
    workdir: Path, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "long", blocking_script(workdir / "never"))
    write_plan(workdir, "version: 1\nentries:\n  - {name: long, dir: suites/long}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir).json()["data"]["batch"]["id"]
    wait_until(
        lambda: any(r.get("supervisor") for r in runs_json(state_dir).values()), what="the run"
    )
    [run] = runs_json(state_dir).values()
    os.kill(run["supervisor"]["pid"], signal.SIGKILL)

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, timeout=120)

    assert final.code == 1
    item = final.json()["data"]["batch"]["items"][0]
    assert item["outcome"] == "interrupted"
    assert "supervisor is gone" in item["run"]["message"]
    assert not group_alive(run["pgid"])


def test_two_batches_on_a_one_slot_fleet_never_overlap(workdir: Path, state_dir: Path) -> None:
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: solo, transport: local, tags: [local], slots: 1}\n"
    )
    make_suite(workdir / "suites", "t", "#!/bin/sh\necho start; sleep 0.2; echo end\n")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: i{n}, dir: suites/t}}\n" for n in range(3)),
    )
    env = {**os.environ, "BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchctl",
                "run",
                "plan.yaml",
                "--staging",
                label,
                "--wait",
                "--quiet",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("first", "second")
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs

    runs = list(runs_json(state_dir).values())
    assert len(runs) == 6
    assert len({run["batch_id"] for run in runs}) == 2
    spans = [
        (datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["ended_at"]))
        for run in runs
    ]
    for (start_a, end_a), (start_b, end_b) in combinations(spans, 2):
        assert end_a <= start_b or end_b <= start_a, (start_a, end_a, start_b, end_b)


def test_ctrl_c_stops_waiting_only_and_the_worker_carries_on(
    workdir: Path, state_dir: Path
) -> None:
    release = workdir / "release"
    make_suite(workdir / "suites", "slow", blocking_script(release))
    write_plan(workdir, "version: 1\nentries:\n  - {name: slow, dir: suites/slow}\n")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "run", "plan.yaml", "--wait"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: any(r.get("pgid") for r in runs_json(state_dir).values()),
            what="the run to start",
        )

        # Its first event line says `run` is following the batch.
        assert waiter.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(waiter.stdout, selectors.EVENT_READ)
        seen = ""
        while "start slow#1" not in seen:
            assert selector.select(timeout=30), f"no progress line within 30s: {seen!r}"
            seen += os.read(waiter.stdout.fileno(), 65536).decode()
        waiter.send_signal(signal.SIGINT)
        _, errors = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    assert waiter.returncode == 130
    assert "the worker carries on" in errors
    [batch_id] = stored_batches(state_dir)
    release.touch()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, timeout=60)
    assert final.code == 0
    assert final.json()["data"]["batch"]["items"][0]["outcome"] == "passed"


def started_its_command_line(pid: int) -> bool:
    """orjson is loaded by the command line's imports, after the entry point
    put its own Ctrl-C handler in place. Before that the interpreter is still
    starting, and SIGINT ends it as it ends any program."""
    return "orjson" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("after_s", [0.0, 0.001, 0.003, 0.01, 0.05, 0.15, 0.3, 0.5])
def test_ctrl_c_at_any_moment_is_exit_130_with_a_sentence_not_a_traceback(
    workdir: Path, after_s: float
) -> None:
    make_suite(workdir / "suites", "slow", blocking_script(workdir / "release"))
    write_plan(workdir, "version: 1\nentries:\n  - {name: slow, dir: suites/slow}\n")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "run", "plan.yaml", "--wait"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: started_its_command_line(waiter.pid), what="the command line to start")
    time.sleep(after_s)  # the moment of the Ctrl-C is what varies here
    waiter.send_signal(signal.SIGINT)
    _, errors = waiter.communicate(timeout=30)
    (workdir / "release").touch()

    assert waiter.returncode == 130, errors
    assert "Traceback" not in errors
    assert errors.startswith("batchctl: "), errors
