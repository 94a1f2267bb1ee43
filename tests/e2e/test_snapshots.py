"""A batch runs the snapshot `run` took of each entry's directory
(state/snapshots.py): the workspace may go, move or change afterwards."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from batchctl.state.snapshots import SnapshotStore
from tests.helpers import make_suite, run_batchctl, write_plan

PLAN = (
    "version: 1\nentries:\n"
    "  - {name: unit, dir: suites/unit}\n"
    "  - {name: lint, dir: suites/lint, needs: [unit]}\n"
)
READS_DATA = '#!/bin/sh\ncat data/input.txt > "$BATCHCTL_ARTIFACTS_DIR/seen.txt"\n'


def make_workspace(root: Path) -> Path:
    make_suite(root / "suites", "unit", READS_DATA)
    (root / "suites" / "unit" / "data").mkdir()
    (root / "suites" / "unit" / "data" / "input.txt").write_text("version one\n")
    make_suite(root / "suites", "lint")
    write_plan(root, PLAN)
    return root


def items(result: Any) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in result.json()["data"]["batch"]["items"]}


def test_a_batch_runs_its_snapshot_after_the_workspace_is_deleted(
    tmp_path: Path, state_dir: Path
) -> None:
    workspace = make_workspace(tmp_path / "checkout")
    # Created without waiting: nothing has run when the workspace goes.
    created = run_batchctl("run", "plan.yaml", "--staging", "build-7", "--json", cwd=workspace)
    assert created.code == 0, created.stderr
    batch_id = created.json()["data"]["batch"]["id"]
    shutil.rmtree(workspace)

    waited = run_batchctl("status", batch_id, "--wait", "--json", cwd=tmp_path)

    assert waited.code == 0, waited.stderr
    finished = {item["name"]: item for item in waited.json()["data"]["batch"]["items"]}
    assert {name: item["outcome"] for name, item in finished.items()} == {
        "unit": "passed",
        "lint": "passed",
    }
    seen = Path(finished["unit"]["run"]["artifacts_path"]) / "seen.txt"
    assert seen.read_text() == "version one\n"


def test_the_same_content_at_another_path_resumes_and_an_edit_makes_a_new_batch(
    tmp_path: Path, state_dir: Path
) -> None:
    first = make_workspace(tmp_path / "pipeline-1")
    ran = run_batchctl("run", "plan.yaml", "--staging", "abc123", "--wait", "--json", cwd=first)
    assert ran.code == 0, ran.stderr
    batch_id = ran.json()["data"]["batch"]["id"]

    # A fresh checkout of the same commit, elsewhere: the same batch.
    second = tmp_path / "pipeline-2"
    shutil.copytree(first, second, symlinks=True)
    again = run_batchctl("run", "plan.yaml", "--staging", "abc123", "--json", cwd=second)
    assert again.code == 0, again.stderr
    assert again.json()["data"]["resumed"] is True
    assert again.json()["data"]["batch"]["id"] == batch_id

    # An edited run.sh: a new batch, and `run` names what changed.
    (second / "suites" / "lint" / "run.sh").write_text("#!/bin/sh\necho edited\n")
    edited = run_batchctl("run", "plan.yaml", "--staging", "abc123", "--wait", "--json", cwd=second)
    assert edited.code == 0, edited.stderr
    data = edited.json()["data"]
    assert data["resumed"] is False
    assert data["batch"]["id"] != batch_id
    assert data["changed_since"] == {"batch": batch_id, "entries": ["lint"]}
    assert f"changed since batch {batch_id}: lint" in edited.stderr
    lint = items(edited)["lint"]
    assert "edited" in Path(lint["run"]["log_path"]).read_text()


def test_a_queued_item_runs_what_the_directory_held_at_run_time(
    tmp_path: Path, state_dir: Path
) -> None:
    workspace = make_workspace(tmp_path / "checkout")
    created = run_batchctl("run", "plan.yaml", "--json", cwd=workspace)
    assert created.code == 0, created.stderr
    batch_id = created.json()["data"]["batch"]["id"]
    (workspace / "suites" / "unit" / "data" / "input.txt").write_text("edited later\n")

    waited = run_batchctl("status", batch_id, "--wait", "--json", cwd=workspace)

    unit = {item["name"]: item for item in waited.json()["data"]["batch"]["items"]}["unit"]
    assert (Path(unit["run"]["artifacts_path"]) / "seen.txt").read_text() == "version one\n"


def test_modes_and_links_inside_the_directory_are_kept(tmp_path: Path, state_dir: Path) -> None:
    workspace = tmp_path / "checkout"
    suite = make_suite(
        workspace / "suites",
        "t",
        "#!/bin/sh\nset -e\n./tool.sh\ncat link/input.txt\n"
        "test -x tool.sh && test ! -x data/input.txt && echo modes-kept\n",
    )
    (suite / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    (suite / "tool.sh").chmod(0o755)
    (suite / "data").mkdir()
    (suite / "data" / "input.txt").write_text("through-the-link\n")
    (suite / "link").symlink_to("data")
    write_plan(workspace, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")

    ran = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workspace)

    assert ran.code == 0, ran.stderr
    log = Path(items(ran)["t"]["run"]["log_path"]).read_text()
    assert "tool-ran\nthrough-the-link\nmodes-kept\n" in log


@pytest.mark.parametrize(
    "kind",
    ["fifo", "socket", "absolute link", "climbing link", "chain", "loop", "round trip", "name"],
)
def test_what_a_snapshot_cannot_hold_is_refused_naming_it(
    tmp_path: Path, state_dir: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "checkout"
    suite = make_suite(workspace / "suites", "t")
    if kind == "fifo":
        os.mkfifo(suite / "pipe")
        expected = "suites/t/pipe: a FIFO; a test directory may hold files, directories"
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        # A short path: AF_UNIX names are limited to about 100 bytes.
        monkeypatch.chdir(suite)
        server.bind("sock")
        server.close()
        expected = "suites/t/sock: a socket"
    elif kind == "absolute link":
        (suite / "secrets").symlink_to("/etc")
        expected = "suites/t/secrets: a symlink to '/etc', outside the test directory"
    elif kind == "climbing link":
        (suite / "up").symlink_to("../..")
        expected = "suites/t/up: a symlink to '../..', outside the test directory"
    elif kind == "chain":
        # Each link alone looks harmless; followed, s1 is above the directory.
        (suite / "s2").symlink_to(".")
        (suite / "s1").symlink_to("s2/..")
        expected = "suites/t/s1: a symlink to 's2/..', outside the test directory"
    elif kind == "loop":
        (suite / "a").symlink_to("b")
        (suite / "b").symlink_to("a")
        expected = "suites/t/a: a symlink to 'b', outside the test directory"
    elif kind == "round trip":
        # Back inside here, but the copy's directory is not named `t`.
        (suite / "data").mkdir()
        (suite / "back").symlink_to("../t/data")
        expected = "suites/t/back: a symlink to '../t/data', outside the test directory"
    else:
        (suite / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
        expected = "suites/t/caf\\udce9.txt: its name is not UTF-8 text"
    write_plan(workspace, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")

    refused = run_batchctl("run", "plan.yaml", cwd=workspace)

    assert refused.code == 2, refused.stderr
    assert "plan.yaml: entry 't' (#1): field 'dir': " + expected in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (state_dir / "batches.json").exists()


def test_prune_collects_snapshots_no_batch_names(tmp_path: Path, state_dir: Path) -> None:
    workspace = make_workspace(tmp_path / "checkout")
    ran = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workspace)
    assert ran.code == 0, ran.stderr
    trees = state_dir / "snapshots" / "trees"
    objects = state_dir / "snapshots" / "objects"
    assert len(list(trees.iterdir())) == 2  # unit and lint
    stored = [path for bucket in objects.iterdir() for path in bucket.iterdir()]
    assert len(stored) == 3  # two run.sh (one differs) and input.txt
    # Written over an hour ago, as far as prune's grace can tell.
    for path in [*trees.iterdir(), *stored]:
        os.utime(path, (1_000_000_000, 1_000_000_000))

    pruned = run_batchctl("prune", "--older-than", "0s", "--json", cwd=workspace)

    assert pruned.code == 0, pruned.stderr
    assert list(trees.iterdir()) == []
    assert [path for bucket in objects.iterdir() for path in bucket.iterdir()] == []


def test_an_entrypoint_that_is_a_link_inside_the_directory_runs(
    tmp_path: Path, state_dir: Path
) -> None:
    workspace = tmp_path / "checkout"
    suite = workspace / "suites" / "t"
    (suite / "ci").mkdir(parents=True)
    (suite / "ci" / "run.sh").write_text("#!/bin/sh\necho through-the-link\n")
    (suite / "ci" / "run.sh").chmod(0o755)
    (suite / "run.sh").symlink_to("ci/run.sh")
    write_plan(workspace, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")

    ran = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workspace)

    assert ran.code == 0, ran.stderr
    assert "through-the-link" in Path(items(ran)["t"]["run"]["log_path"]).read_text()


def test_version_control_metadata_is_not_part_of_the_snapshot(
    tmp_path: Path, state_dir: Path
) -> None:
    """Two checkouts of one commit differ in .git (packs, index times): a
    re-run from the second still resumes."""
    first = make_workspace(tmp_path / "one")
    (first / "suites" / "unit" / ".git").mkdir()
    (first / "suites" / "unit" / ".git" / "index").write_text("one")
    ran = run_batchctl("run", "plan.yaml", "--staging", "c1", "--json", cwd=first)
    assert ran.code == 0, ran.stderr
    second = tmp_path / "two"
    shutil.copytree(first, second, symlinks=True)
    (second / "suites" / "unit" / ".git" / "index").write_text("another checkout")

    again = run_batchctl("run", "plan.yaml", "--staging", "c1", "--json", cwd=second)

    assert again.code == 0, again.stderr
    assert again.json()["data"]["resumed"] is True


def test_prune_collects_what_a_killed_run_stored_even_with_no_batch_to_remove(
    tmp_path: Path, state_dir: Path
) -> None:
    workspace = make_workspace(tmp_path / "checkout")
    # What a `run` killed after storing its snapshots and before recording its
    # batch leaves: a tree and objects no batch names, over an hour old.
    SnapshotStore(state_dir).take(workspace / "suites" / "unit")
    stored = [path for path in (state_dir / "snapshots").rglob("*") if path.is_file()]
    assert len(stored) == 3  # the tree, run.sh and input.txt
    for path in stored:
        os.utime(path, (1_000_000_000, 1_000_000_000))

    pruned = run_batchctl("prune", "--older-than", "0s", "--json", cwd=workspace)

    assert pruned.code == 0, pruned.stderr
    assert pruned.json()["data"]["removed"] == []
    assert [path for path in (state_dir / "snapshots").rglob("*") if path.is_file()] == []
