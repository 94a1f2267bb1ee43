"""`status ID --json` of a finished batch is answered before the command line
is imported, and says exactly what the full command says."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from batchctl.cli.quick import answer, parse_status_json
from batchctl.state import final_views
from batchctl.transports.processes import this_process
from tests.cli.test_startup import imported_after
from tests.helpers import blocking_script, make_suite, run_batchctl, stored_batches, write_plan

MIXED_PLAN = """
version: 1
entries:
  - {name: good, dir: suites/pass}
  - {name: bad, dir: suites/fail}
  - {name: after-bad, dir: suites/pass, needs: [bad]}
  - {name: second-try, dir: suites/flaky, retries: 1, retry_on: [failed]}
  - {name: slow, dir: suites/slow, timeout: 1, retries: 0}
"""


def finished_mixed_batch(workdir: Path) -> str:
    make_suite(workdir / "suites", "pass")
    make_suite(workdir / "suites", "fail", "#!/bin/sh\necho broken\nexit 3\n")
    make_suite(workdir / "suites", "flaky", '#!/bin/sh\n[ "$BATCHCTL_ATTEMPT" -ge 2 ] || exit 1\n')
    make_suite(workdir / "suites", "slow", "#!/bin/sh\nexec sleep 30\n")
    write_plan(workdir, MIXED_PLAN)
    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    assert waited.code == 1, waited.stderr
    batch_id: str = waited.json()["data"]["batch"]["id"]
    return batch_id


def items_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in view["items"]}


def test_a_finished_batch_is_shown_without_the_command_line_and_the_same(
    workdir: Path, state_dir: Path
) -> None:
    batch_id = finished_mixed_batch(workdir)

    quick = run_batchctl("status", batch_id, "--json", cwd=workdir)
    # --wait is not a form the quick answer takes: the full command answers
    # (at once, the batch is done; exit 1, not every item passed).
    full = run_batchctl("status", batch_id, "--json", "--wait", cwd=workdir)

    assert (quick.code, full.code) == (0, 1)
    assert quick.stdout == full.stdout
    view = quick.json()["data"]["batch"]
    assert view["done"] is True
    items = items_of(view)
    assert items["good"]["outcome"] == "passed"
    assert (items["bad"]["outcome"], items["bad"]["run"]["exit_code"]) == ("failed", 3)
    assert (items["after-bad"]["outcome"], items["after-bad"]["blame"]) == ("skipped", "bad#1")
    assert (items["second-try"]["outcome"], items["second-try"]["attempt"]) == ("passed", 2)
    assert len(items["second-try"]["history"]) == 1
    assert items["slow"]["outcome"] == "timeout"
    assert view["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "timeout": 1}

    probe = f"from batchctl.cli.entry import main\nmain(['status', '{batch_id}', '--json'])"
    modules = imported_after(probe, cwd=workdir)
    assert "batchctl.cli.quick" in modules  # the probe did answer a status
    assert not {"typer", "pydantic", "filelock", "batchctl.engine.service"} & modules

    # Without the final view the worker wrote (finished by an older
    # batchctl): joined from the records, the same again, still quick.
    final_views.view_path(state_dir, batch_id).unlink()
    try:
        assert answer(["status", batch_id, "--json"], os.environ) == 0
    finally:
        gc.enable()  # an answer leaves the collector off: its process ends next
    assert run_batchctl("status", batch_id, "--json", cwd=workdir).stdout == full.stdout
    modules = imported_after(probe, cwd=workdir)
    assert not {"typer", "pydantic", "filelock", "batchctl.engine.service"} & modules


def test_an_unfinished_batch_is_left_to_the_full_command(workdir: Path, state_dir: Path) -> None:
    gate = workdir / "gate"
    make_suite(workdir / "suites", "blocked", blocking_script(gate))
    make_suite(workdir / "suites", "pass")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: first, dir: suites/blocked}\n"
        "  - {name: then, dir: suites/pass, needs: [first]}\n",
    )
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir).json()["data"]["batch"]["id"]

    assert answer(["status", batch_id, "--json"], os.environ) is None
    shown = run_batchctl("status", batch_id, "--json", cwd=workdir)
    then = items_of(shown.json()["data"]["batch"])["then"]
    assert then["reason"].startswith("waiting on first")  # explained by the full command
    gate.touch()
    assert run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir).code == 0


def test_unknown_ids_and_other_forms_are_left_to_the_full_command(state_dir: Path) -> None:
    assert answer(["status", "no-such-batch", "--json"], os.environ) is None
    unknown = run_batchctl("status", "no-such-batch", "--json")
    assert unknown.code == 3
    assert unknown.error()["error"]["code"] == "not_found"

    assert parse_status_json(["status", "b1", "--json", "--state-dir", "/s"]) == ("b1", "/s")
    assert parse_status_json(["status", "--state-dir=/s", "--json", "b1"]) == ("b1", "/s")
    assert parse_status_json(["status", "b1", "--fleet", "f.yaml", "-q", "--json"]) == ("b1", None)
    for other in (
        ["status", "b1"],
        ["status", "b1", "item", "--json"],
        ["status", "b1", "--json", "--wait"],
        ["status", "b1", "--json", "--help"],
        ["status", "--json", "--state-dir"],
        ["list", "--json"],
    ):
        assert parse_status_json(other) is None, other


def test_wait_returns_once_the_worker_has_let_go_of_the_batch(
    workdir: Path, state_dir: Path
) -> None:
    """What `--wait` reports is final: the finished mark is written and the
    lease released before it returns, so a look right after sees the same."""
    make_suite(workdir / "suites", "pass")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: a, dir: suites/pass}\n"
        "  - {name: b, dir: suites/pass, needs: [a]}\n",
    )
    for staging in ("s1", "s2", "s3"):
        waited = run_batchctl("run", "plan.yaml", "--staging", staging, "--wait", "--json")
        assert waited.code == 0, waited.stderr
        batch_id = waited.json()["data"]["batch"]["id"]
        stored = stored_batches(state_dir)[batch_id]
        assert stored.get("finished") is True
        assert stored.get("lease") is None


def test_wait_on_a_done_batch_its_worker_never_marked_finished_returns(
    workdir: Path, state_dir: Path
) -> None:
    """A worker killed after its last step but before letting go: every item
    is final, nothing will mark the batch finished. `--wait` lets go in its
    place and returns, instead of waiting for a mark that never comes."""
    from batchctl.state.batches import BatchStore

    make_suite(workdir / "suites", "pass")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/pass}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--wait", "--json").json()["data"]["batch"]["id"]
    # Its lease names a worker that is gone and a fleet file that is gone
    # too: a new worker could not even start.
    dead = this_process().model_copy(update={"pid": os.getpid() + 100_000, "start_ticks": 1})
    lease = {
        "token": "t",
        "pid": dead.pid,
        "host": "here",
        "heartbeat_at": "2026-11-22T00:00:00Z",
        "fleet": str(workdir / "gone.yaml"),
        "holder": dead.model_dump(),
    }
    store = BatchStore(state_dir)
    with store.file.locked():
        store.file.append(
            [
                {"op": "reopen", "batch": batch_id},
                {"op": "lease", "batch": batch_id, "lease": lease},
            ]
        )

    waited = run_batchctl("status", batch_id, "--wait", "--json", timeout=30)

    assert waited.code == 0, waited.stderr
    assert stored_batches(state_dir)[batch_id].get("finished") is True
