"""run / status / list through the real entry point: envelopes, exit codes, errors."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest

from batchctl.engine.service import BatchService
from tests.helpers import (
    CliRunner,
    blocking_script,
    lock_held_elsewhere,
    make_suite,
    run_batchctl,
    snapshot_dir,
    write_plan,
)

PLAN = """
version: 1
entries:
  - name: build
    dir: suites/build
  - name: test
    dir: suites/test
    needs: [build]
"""


@pytest.fixture
def plan(workdir: Path) -> Path:
    # Runs block until the test ends (the autouse fixture stops them), so the
    # batch stays at a known point: build running, test waiting on it.
    never = workdir / "never-released"
    make_suite(workdir / "suites", "build", blocking_script(never))
    make_suite(workdir / "suites", "test", blocking_script(never))
    return write_plan(workdir, PLAN)


def test_run_creates_then_resumes_the_same_batch(plan: Path, cli: CliRunner) -> None:
    first = cli("run", "plan.yaml", "--staging", "b-1", "--json")
    second = cli("run", "plan.yaml", "--staging", "b-1", "--json")
    other_staging = cli("run", "plan.yaml", "--staging", "b-2", "--json")

    assert first.code == second.code == other_staging.code == 0
    created, resumed = first.json()["data"], second.json()["data"]
    assert created["resumed"] is False
    assert resumed["resumed"] is True
    assert resumed["batch"]["id"] == created["batch"]["id"]
    assert other_staging.json()["data"]["batch"]["id"] != created["batch"]["id"]

    batch = created["batch"]
    assert batch["staging"] == "b-1"
    assert batch["source"] == "plan:plan.yaml"
    assert batch["expected_count"] == 2
    assert batch["created_at"].endswith("Z")
    assert batch["done"] is False
    assert [(i["name"], i["state"], i["outcome"], i["selector"]) for i in batch["items"]] == [
        ("build", "dispatched", "running", "tag:local"),
        ("test", "queued", "waiting", "tag:local"),
    ]
    assert batch["items"][0]["machine"] == "local"
    assert batch["items"][1]["reason"] == "waiting on build (running)"
    assert batch["counts"] == {"running": 1, "waiting": 1}


def test_priority_is_kept_with_the_batch_and_a_bad_one_is_refused(
    plan: Path, cli: CliRunner, state_dir: Path
) -> None:
    refused = cli("run", "plan.yaml", "--priority", "0", "--json")
    assert refused.code == 2
    assert "--priority" in refused.error()["error"]["message"]
    assert not state_dir.exists()

    made = cli("run", "plan.yaml", "--priority", "5", "--json").json()["data"]["batch"]
    # A resume keeps the priority the batch was made with, and says so.
    again = cli("run", "plan.yaml", "--priority", "9", "--json")
    resumed = again.json()["data"]["batch"]
    assert (made["priority"], resumed["id"], resumed["priority"]) == (5, made["id"], 5)
    assert "keeps the priority it was made with, 5" in again.stderr
    assert "keeps the priority" not in cli("run", "plan.yaml", "--json").stderr
    assert cli("status", made["id"], "--json").json()["data"]["batch"]["priority"] == 5
    assert "priority 5" in cli("status", made["id"]).stdout


def test_a_resume_that_asks_for_another_cap_is_told_the_batch_keeps_its_own(
    plan: Path, cli: CliRunner
) -> None:
    made = cli("run", "plan.yaml", "--max-parallel", "1", "--json")
    assert made.code == 0, made.stderr
    again = cli("run", "plan.yaml", "--max-parallel", "4", "--json")
    assert again.json()["data"]["batch"]["id"] == made.json()["data"]["batch"]["id"]
    assert "keeps the cap it was made with, 1" in again.stderr
    assert "--max-parallel 4" in again.stderr
    # The same cap, or none asked for: nothing to say.
    same = cli("run", "plan.yaml", "--max-parallel", "1")
    assert same.code == 0
    assert "resumed" in same.stdout + same.stderr
    assert "keeps the cap" not in same.stdout + same.stderr
    assert "keeps the cap" not in cli("run", "plan.yaml", "--json").stderr


def test_an_unknown_ready_order_is_refused_naming_the_variable(
    plan: Path, state_dir: Path, workdir: Path
) -> None:
    refused = run_batchctl(
        "run", "plan.yaml", "--json", cwd=workdir, env={"BATCHCTL_READY_ORDER": "lifo"}
    )
    assert refused.code == 2
    assert "BATCHCTL_READY_ORDER" in refused.error()["error"]["message"]
    assert not state_dir.exists()


def test_edited_plan_makes_a_new_batch_and_new_flag_forces_one(plan: Path, cli: CliRunner) -> None:
    original = cli("run", "plan.yaml", "--json").json()["data"]["batch"]["id"]
    plan.write_text(PLAN.replace("dir: suites/test", "dir: suites/test\n    retries: 2"))
    edited = cli("run", "plan.yaml", "--json").json()["data"]["batch"]["id"]
    forced = cli("run", "plan.yaml", "--new", "--json").json()["data"]["batch"]["id"]
    resumed = cli("run", "plan.yaml", "--json").json()["data"]["batch"]["id"]

    assert len({original, edited, forced}) == 3
    assert resumed == forced


def test_dry_run_shows_hash_and_items_and_writes_nothing(
    plan: Path, cli: CliRunner, state_dir: Path
) -> None:
    result = cli("run", "plan.yaml", "--dry-run", "--json")

    assert result.code == 0
    data = result.json()["data"]
    assert len(data["plan_hash"]) == 64
    assert [item["name"] for item in data["items"]] == ["build", "test"]
    assert data["would_resume"] is None
    assert not state_dir.exists()


def test_status_and_list_show_the_batch(plan: Path, cli: CliRunner) -> None:
    batch_id = cli("run", "plan.yaml", "--staging", "x", "--json").json()["data"]["batch"]["id"]

    status = cli("status", batch_id)
    by_prefix = cli("status", batch_id[:15], "--json")
    listing = cli("list", "--json")

    assert status.code == 0
    assert batch_id in status.stdout
    assert "waiting on build" in status.stdout
    # Piped, the table is plain aligned text: every row's columns line up.
    table = status.stdout.split("\n\n")[1].splitlines()
    assert table[0].split() == ["ITEM", "OUTCOME", "TRY", "MACHINE", "SELECTOR", "DETAIL"]
    assert [line.split()[0] for line in table[1:]] == ["build", "test"]
    outcome_column = table[0].index("OUTCOME")
    assert {line[outcome_column:].split()[0] for line in table[1:]} <= {"running", "waiting"}
    assert by_prefix.json()["data"]["batch"]["id"] == batch_id
    batches = listing.json()["data"]["batches"]
    assert [(b["id"], b["staging"], b["done"]) for b in batches] == [(batch_id, "x", False)]
    assert batches[0]["counts"] == {"running": 1, "waiting": 1}


def test_list_is_newest_first(plan: Path, cli: CliRunner) -> None:
    ids = [
        cli("run", "plan.yaml", "--staging", label, "--json").json()["data"]["batch"]["id"]
        for label in ("one", "two", "three")
    ]
    listed = [b["id"] for b in cli("list", "--json").json()["data"]["batches"]]
    assert listed == list(reversed(ids))


def test_unknown_batch_is_exit_3(cli: CliRunner) -> None:
    result = cli("status", "nope", "--json")
    assert result.code == 3
    assert result.stdout == ""
    assert result.error()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "args",
    [
        ("run", "plan.yaml", "--json"),
        ("run", "plan.yaml", "--dry-run", "--json"),
        ("list", "--json"),
        ("run", "missing.yaml", "--json"),
        ("status", "missing", "--json"),
        ("status", "--json"),
        ("run", "plan.yaml", "--no-such-flag", "--json"),
    ],
)
def test_json_mode_prints_exactly_one_document(
    plan: Path, cli: CliRunner, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    if result.code == 0:
        document = json.loads(result.stdout)
        assert document["schema_version"] == "v1"
        assert document["status"] == "ok"
        assert "data" in document
    else:
        assert result.stdout == ""
        error = json.loads(result.stderr)
        assert error["status"] == "error"
        assert set(error["error"]) == {"code", "message", "details"}


def test_unreadable_state_is_exit_4_and_left_untouched(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "build")
    write_plan(workdir, "version: 1\nentries:\n  - {name: build, dir: suites/build}\n")
    finished = cli("run", "plan.yaml", "--wait", "--json")
    assert finished.code == 0
    batch_id = finished.json()["data"]["batch"]["id"]
    (state_dir / "batches.json").write_bytes(b'{"schema_version": 1, "batches": {"trunc')
    before = snapshot_dir(state_dir)

    for args in (("status", batch_id), ("run", "plan.yaml"), ("list",)):
        result = cli(*args)
        assert result.code == 4, args
        assert "batches.json is not valid JSON" in result.stderr
        assert "left untouched" in result.stderr
        assert "Traceback" not in result.stderr
    assert snapshot_dir(state_dir) == before


def test_lock_timeout_is_exit_4_with_the_lock_named(
    plan: Path, cli: CliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir.mkdir()
    lock_path = state_dir / "batches.json.lock"
    monkeypatch.setenv("BATCHCTL_LOCK_TIMEOUT", "0.2")

    with lock_held_elsewhere(lock_path):
        result = cli("run", "plan.yaml", "--json")

    assert result.code == 4
    error = result.error()["error"]
    assert error["code"] == "lock_timeout"
    assert str(lock_path) in error["message"]


def test_unexpected_error_writes_a_crash_report(
    plan: Path, cli: CliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: BatchService, batch_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(BatchService, "status", explode)
    result = cli("status", "anything")

    assert result.code == 70
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr
    reports = list((state_dir / "crash").glob("batchctl-crash-*.log"))
    assert len(reports) == 1
    assert str(reports[0]) in result.stderr
    assert "RuntimeError: boom" in reports[0].read_text()
    assert stat.S_IMODE(reports[0].stat().st_mode) == 0o600


def test_a_crash_report_never_leaves_the_state_dir(
    plan: Path, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: BatchService, batch_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(BatchService, "status", explode)
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    result = cli("status", "anything", "--state-dir", str(not_a_dir / "state"))

    assert result.code == 70
    # No state dir to keep it in: the traceback is shown, nothing in /tmp.
    assert "RuntimeError: boom" in result.stderr
    assert "Traceback" in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_version(cli: CliRunner) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.startswith("batchctl ")


def test_help_shows_where_state_and_fleet_come_from() -> None:
    shown = run_batchctl("status", "--help", env={"COLUMNS": "200"})
    assert shown.code == 0
    assert "(default: $BATCHCTL_STATE_DIR, else $XDG_STATE_HOME/batchctl)" in shown.stdout
    assert "(default: $BATCHCTL_FLEET, else <state-dir>/fleet.yaml" in shown.stdout


def test_the_shell_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        env = {
            "_BATCHCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        completed = run_batchctl(env=env)
        assert completed.code == 0, completed.stderr
        return completed.stdout.split()

    assert complete("batchctl sta") == ["status"]
    assert complete("batchctl list --st") == ["--staging", "--state", "--state-dir"]
    # The shell named, not detected from the parent processes: under make's
    # /bin/sh recipe shell, detection would find sh and offer nothing.
    script = run_batchctl(
        "--show-completion",
        "bash",
        env={"SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert "_batchctl_completion" in script.stdout
