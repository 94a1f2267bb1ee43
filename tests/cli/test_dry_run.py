"""run --dry-run says where each item could run, and refuses a plan with
items that never could, before anything is written."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import make_suite, run_batchctl, snapshot_dir, write_plan

PLAN = """
version: 1
entries:
  - {name: ok, dir: suites/ok}
  - {name: gpu, dir: suites/ok, tag: gpu}
  - {name: bare, dir: suites/bare}
"""


def test_items_that_could_never_run_are_refused_up_front(workdir: Path, state_dir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    (workdir / "suites" / "bare").mkdir()
    write_plan(workdir, PLAN)
    before = snapshot_dir(state_dir)

    human = run_batchctl("run", "plan.yaml", "--dry-run", cwd=workdir)
    machine = run_batchctl("run", "plan.yaml", "--dry-run", "--json", cwd=workdir)

    assert human.code == machine.code == 2
    rows = {line.split()[0]: line for line in human.stdout.splitlines()[5:]}
    assert rows["ok"].rstrip().endswith("local")
    assert rows["gpu"].rstrip().endswith("never: no_matching_machine")
    assert rows["bare"].rstrip().endswith("never: entrypoint_missing")
    assert "2 of 3 items would be skipped: gpu (no_matching_machine), bare" in human.stderr
    error = machine.error()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"]["would_skip"] == {
        "gpu": "no_matching_machine",
        "bare": "entrypoint_missing",
    }
    assert machine.stdout == ""
    assert snapshot_dir(state_dir) == before


def test_a_runnable_plan_shows_where_each_item_could_run(workdir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    write_plan(workdir, "version: 1\nentries:\n  - {name: ok, dir: suites/ok}\n")

    shown = run_batchctl("run", "plan.yaml", "--dry-run", "--json", cwd=workdir)

    assert shown.code == 0, shown.stderr
    [item] = shown.json()["data"]["items"]
    assert (item["machines"], item["would_skip"]) == (["local"], None)
