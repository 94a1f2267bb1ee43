"""Plan semantics with real processes: needs, blame, retries, timeouts, retry."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from batchctl.transports.processes import group_alive, pid_alive
from tests.helpers import (
    blocking_script,
    make_suite,
    run_batchctl,
    run_pgid,
    stored_runs,
    wait_until,
    write_plan,
)

PASS = '#!/bin/sh\necho "$BATCHCTL_ITEM attempt $BATCHCTL_ATTEMPT"\n'


def items_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in view["items"]}


def runs_json(state_dir: Path) -> dict[str, Any]:
    return stored_runs(state_dir)


def test_diamond_and_independent_chains_where_one_chain_fails(
    workdir: Path, state_dir: Path
) -> None:
    gate = workdir / "gate"
    make_suite(workdir / "suites", "pass", PASS)
    make_suite(
        workdir / "suites",
        "fail-late",
        blocking_script(gate, before="failing soon").replace("echo ''\n", "exit 1\n"),
    )
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - {name: top, dir: suites/pass}
          - {name: left, dir: suites/pass, needs: [top]}
          - {name: right, dir: suites/pass, needs: [top]}
          - {name: bottom, dir: suites/pass, needs: [left, right]}
          - {name: c1a, dir: suites/fail-late}
          - {name: c1b, dir: suites/pass, needs: [c1a]}
          - {name: c1c, dir: suites/pass, needs: [c1b]}
          - {name: c2a, dir: suites/pass}
          - {name: c2b, dir: suites/pass, needs: [c2a]}
        """,
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir).json()["data"]["batch"]["id"]

    def outcome(name: str) -> str:
        view = run_batchctl("status", batch_id, "--json", cwd=workdir).json()["data"]["batch"]
        return str(items_of(view)[name]["outcome"])

    # The healthy chain and the diamond finish while c1a is still running.
    wait_until(
        lambda: outcome("bottom") == "passed" and outcome("c2b") == "passed",
        what="the diamond and the healthy chain to pass",
    )
    assert outcome("c1a") == "running"
    gate.touch()

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir)

    assert final.code == 1
    items = items_of(final.json()["data"]["batch"])
    assert {name: item["outcome"] for name, item in items.items()} == {
        "top": "passed",
        "left": "passed",
        "right": "passed",
        "bottom": "passed",
        "c1a": "failed",
        "c1b": "skipped",
        "c1c": "skipped",
        "c2a": "passed",
        "c2b": "passed",
    }
    for dependent in ("c1b", "c1c"):
        assert items[dependent]["error_code"] == "dep_failed"
        assert items[dependent]["blame"] == "c1a#1"
    c2b_started = datetime.fromisoformat(items["c2b"]["run"]["started_at"])
    c1a_ended = datetime.fromisoformat(items["c1a"]["run"]["ended_at"])
    assert c2b_started < c1a_ended


def test_a_flaky_item_passes_on_its_second_attempt(workdir: Path, state_dir: Path) -> None:
    make_suite(
        workdir / "suites",
        "flaky",
        '#!/bin/sh\necho "attempt $BATCHCTL_ATTEMPT"\n[ "$BATCHCTL_ATTEMPT" -ge 2 ]\n',
    )
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: flaky, dir: suites/flaky, retries: 1, retry_on: [failed]}\n",
    )

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)

    assert result.code == 0, result.stderr
    batch = result.json()["data"]["batch"]
    item = items_of(batch)["flaky"]
    assert (item["outcome"], item["attempt"]) == ("passed", 2)
    assert len(item["history"]) == 1
    detail = run_batchctl("status", batch["id"], "flaky", "--json", cwd=workdir).json()["data"]
    attempts = [(a["attempt"], a["status"], a["exit_code"]) for a in detail["attempts"]]
    assert attempts == [(1, "failed", 1), (2, "succeeded", 0)]
    assert detail["attempts"][0]["id"] == item["history"][0]
    assert "attempt 1" in Path(detail["attempts"][0]["log_path"]).read_text()
    assert "attempt 2" in Path(detail["attempts"][1]["log_path"]).read_text()
    human = run_batchctl("status", batch["id"], "flaky", cwd=workdir)
    assert "succeeded" in human.stdout
    assert "failed" in human.stdout


def test_a_non_zero_exit_is_not_retried_unless_failed_is_listed(
    workdir: Path, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "bad", "#!/bin/sh\nexit 4\n")
    write_plan(workdir, "version: 1\nentries:\n  - {name: bad, dir: suites/bad, retries: 2}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)

    assert result.code == 1
    item = items_of(result.json()["data"]["batch"])["bad"]
    assert (item["outcome"], item["attempt"], item["history"]) == ("failed", 1, [])
    assert item["run"]["exit_code"] == 4
    assert len(runs_json(state_dir)) == 1


def test_a_process_ignoring_sigterm_is_killed_at_timeout(workdir: Path, state_dir: Path) -> None:
    script = (
        "#!/bin/sh\n"
        "trap '' TERM\n"
        "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' &\n"
        'echo "$$ $!" > "$BATCHCTL_ARTIFACTS_DIR/pids"\n'
        "while :; do sleep 0.1; done\n"
    )
    make_suite(workdir / "suites", "stubborn", script)
    write_plan(
        workdir, "version: 1\nentries:\n  - {name: stubborn, dir: suites/stubborn, timeout: 1}\n"
    )

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, timeout=60)

    assert result.code == 1
    item = items_of(result.json()["data"]["batch"])["stubborn"]
    assert item["outcome"] == "timeout"
    assert item["run"]["message"] == "timed out after 1s"
    [run_id] = runs_json(state_dir)
    pgid = run_pgid(state_dir, run_id)
    assert pgid is not None
    assert not group_alive(pgid)
    pids = (Path(item["run"]["artifacts_path"]) / "pids").read_text().split()
    assert len(pids) == 2
    assert not any(pid_alive(int(pid)) for pid in pids)


def test_retry_reruns_only_failed_items_and_their_skipped_dependents(
    workdir: Path, state_dir: Path
) -> None:
    fixed = workdir / "fixed"
    make_suite(workdir / "suites", "pass", PASS)
    make_suite(workdir / "suites", "broken", f"#!/bin/sh\necho try\n[ -e '{fixed}' ]\n")
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - {name: fine, dir: suites/pass}
          - {name: broken, dir: suites/broken}
          - {name: after, dir: suites/pass, needs: [broken]}
        """,
    )
    first = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    assert first.code == 1
    before = items_of(first.json()["data"]["batch"])
    assert before["after"]["outcome"] == "skipped"

    # Re-running the finished batch only reports it.
    again = run_batchctl("run", "plan.yaml", "--json", cwd=workdir)
    assert again.json()["data"]["resumed"] is True
    assert len(runs_json(state_dir)) == 2

    fixed.touch()
    batch_id = first.json()["data"]["batch"]["id"]
    retried = run_batchctl("retry", batch_id, "--wait", "--json", cwd=workdir)

    assert retried.code == 0, retried.stderr
    after = items_of(retried.json()["data"]["batch"])
    assert {name: item["outcome"] for name, item in after.items()} == {
        "fine": "passed",
        "broken": "passed",
        "after": "passed",
    }
    assert after["fine"]["run_id"] == before["fine"]["run_id"]  # kept, not re-run
    assert after["fine"]["attempt"] == 1
    assert after["broken"]["attempt"] == 2
    assert after["broken"]["history"] == [before["broken"]["run_id"]]
    assert after["after"]["attempt"] == 2
    assert len(runs_json(state_dir)) == 4

    nothing = run_batchctl("retry", batch_id, cwd=workdir)
    assert nothing.code == 0
    assert "nothing to retry" in nothing.stdout
