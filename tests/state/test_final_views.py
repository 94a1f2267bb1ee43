"""The final view a worker writes when it finishes a batch: what `status
--json` prints for that batch, and only while it is that batch as finished."""

from __future__ import annotations

import gzip
import shutil
import stat
from pathlib import Path

from batchctl.state import final_views
from tests.helpers import blocking_script, make_suite, run_batchctl, write_plan

PLAN = """
version: 1
entries:
  - {name: good, dir: suites/pass}
  - {name: bad, dir: suites/fail}
  - {name: after-bad, dir: suites/pass, needs: [bad]}
"""


def finished_batch(workdir: Path) -> str:
    """A finished batch whose item `bad` failed; once ``workdir/retrying``
    exists, a new attempt of it waits for ``workdir/gate`` and passes (the
    batch runs the snapshot `run` took, so the script cannot be edited later)."""
    make_suite(workdir / "suites", "pass")
    make_suite(
        workdir / "suites",
        "fail",
        f"#!/bin/sh\nif [ -e '{workdir / 'retrying'}' ]; then\n"
        + blocking_script(workdir / "gate").removeprefix("#!/bin/sh\n")
        + "exit 0\nfi\nexit 3\n",
    )
    write_plan(workdir, PLAN)
    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    assert waited.code == 1, waited.stderr
    batch_id: str = waited.json()["data"]["batch"]["id"]
    return batch_id


def full_status(batch_id: str, workdir: Path, *more: str) -> str:
    """`status --json` answered by the full command line (``--wait`` is not
    a form the quick answer takes), from the records."""
    shown = run_batchctl("status", batch_id, "--json", "--wait", *more, cwd=workdir)
    assert shown.code in (0, 1), shown.stderr
    return shown.stdout


def test_the_finished_batch_has_a_private_view_that_status_prints(
    workdir: Path, state_dir: Path
) -> None:
    batch_id = finished_batch(workdir)
    path = final_views.view_path(state_dir, batch_id)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = final_views.read(state_dir, batch_id, str(state_dir / "runs"))
    assert stored is not None
    quick = run_batchctl("status", batch_id, "--json", cwd=workdir)
    # Printed as stored, and the same as the view joined from the records.
    assert quick.stdout.encode() == stored
    assert quick.stdout == full_status(batch_id, workdir)


def test_a_stored_view_is_printed_as_it_is(workdir: Path, state_dir: Path) -> None:
    """What the quick answer prints is the stored file, not the records
    joined again: a view with another body under its header shows."""
    batch_id = finished_batch(workdir)
    path = final_views.view_path(state_dir, batch_id)
    with gzip.open(path, "rb") as stored:
        header = stored.readline()
    with gzip.open(path, "wb") as changed:
        changed.write(header + b'{"schema_version": "v1", "status": "ok", "data": "stored"}\n')

    shown = run_batchctl("status", batch_id, "--json", cwd=workdir)

    assert shown.json()["data"] == "stored"


def test_retry_removes_the_view_before_it_changes_the_batch(workdir: Path, state_dir: Path) -> None:
    batch_id = finished_batch(workdir)
    gate = workdir / "gate"
    (workdir / "retrying").touch()  # the next attempt passes once let through

    retried = run_batchctl("retry", batch_id, "--json", cwd=workdir)

    assert retried.code == 0, retried.stderr
    # Once retry has returned, nothing prints the batch as it was (its
    # retried item is held at the gate: the batch cannot be finished again).
    assert not final_views.view_path(state_dir, batch_id).exists()
    shown = run_batchctl("status", batch_id, "--json", cwd=workdir).json()["data"]["batch"]
    assert shown["done"] is False
    gate.touch()
    after = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir)
    assert after.code == 0
    assert after.json()["data"]["batch"]["counts"] == {"passed": 3}
    # Finished again: a new view, of the batch as it is now.
    assert run_batchctl("status", batch_id, "--json", cwd=workdir).stdout == after.stdout
    assert final_views.view_path(state_dir, batch_id).exists()


def test_prune_removes_the_view_with_its_batch(workdir: Path, state_dir: Path) -> None:
    batch_id = finished_batch(workdir)

    assert run_batchctl("prune", "--older-than", "0s", cwd=workdir).code == 0

    assert not final_views.view_path(state_dir, batch_id).exists()
    assert run_batchctl("status", batch_id, "--json", cwd=workdir).code == 3


def test_a_view_rendered_for_another_place_or_damaged_is_not_printed(
    workdir: Path, state_dir: Path
) -> None:
    batch_id = finished_batch(workdir)
    # The state directory copied elsewhere: the view's log paths name the
    # old place; the answer names the new one.
    moved = workdir / "moved-state"
    shutil.copytree(state_dir, moved)
    shown = run_batchctl("status", batch_id, "--json", "--state-dir", str(moved), cwd=workdir)
    items = {item["name"]: item for item in shown.json()["data"]["batch"]["items"]}
    assert items["good"]["run"]["log_path"].startswith(f"{moved}/runs/")
    assert shown.stdout == full_status(batch_id, workdir, "--state-dir", str(moved))

    # Cut short: found out before anything is printed.
    path = final_views.view_path(state_dir, batch_id)
    path.write_bytes(path.read_bytes()[:-20])
    assert final_views.read(state_dir, batch_id, str(state_dir / "runs")) is None
    assert run_batchctl("status", batch_id, "--json", cwd=workdir).stdout == full_status(
        batch_id, workdir
    )

    # Of another format: written by another batchctl.
    with gzip.open(path, "wb") as other:
        other.write(b'{"format": 0}\n{}\n')
    assert final_views.read(state_dir, batch_id, str(state_dir / "runs")) is None


def test_a_view_that_cannot_be_written_only_is_not_there(workdir: Path, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "views").write_text("not a directory\n")

    batch_id = finished_batch(workdir)

    log = (state_dir / "workers" / f"{batch_id}.log").read_text()
    assert "final view not written" in log
    assert log.index("final view not written") < log.index(f"batch {batch_id} is done")
    shown = run_batchctl("status", batch_id, "--json", cwd=workdir)
    assert shown.code == 0
    assert shown.json()["data"]["batch"]["done"] is True
    assert shown.stdout == full_status(batch_id, workdir)


def test_temp_files_of_a_killed_writer_are_swept_by_the_next(
    workdir: Path, state_dir: Path
) -> None:
    views = final_views.views_dir(state_dir)
    views.mkdir(parents=True)
    leftover = views / ".20261122-000000-dead00.4242.tmp"
    leftover.write_bytes(b"half a view")

    batch_id = finished_batch(workdir)

    assert not leftover.exists()
    assert sorted(path.name for path in views.iterdir()) == [f"{batch_id}.json.gz"]
