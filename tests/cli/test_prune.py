"""prune through the real entry point: what goes, what stays, and that the
state files shrink. Batches are made old by moving the clock, never by waiting."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import freezegun
import pytest

from batchctl.cli.context import load_settings, open_service
from tests.fakes import FakeClock
from tests.helpers import (
    CliRunner,
    make_suite,
    processes_of,
    snapshot_dir,
    stored_batches,
    stored_runs,
    wait_until,
    write_plan,
)

FAILING_SCRIPT = "#!/bin/sh\necho broken\nexit 1\n"
STATE_FILES = ("batches.json", "batches.journal", "runs.json", "runs.journal")


@contextmanager
def month_later() -> Iterator[None]:
    with freezegun.freeze_time(datetime.now(UTC) + timedelta(days=31)):
        yield


def settle(tmp_path: Path) -> None:
    """Wait until the batch's worker and executors have exited, so nothing
    but the command under test writes to the state directory."""
    wait_until(lambda: not processes_of(tmp_path), what="the test's processes to exit")


def bytes_on_disk(state_dir: Path, *names: str) -> int:
    return sum((state_dir / name).stat().st_size for name in names if (state_dir / name).exists())


def finished_batch(cli: CliRunner, *args: str) -> str:
    result = cli("run", "plan.yaml", "--wait", "--quiet", "--json", *args)
    assert result.code in (0, 1), result.stderr
    batch = result.json()["data"]["batch"]
    assert batch["done"] is True
    return str(batch["id"])


def sim_fleet(workdir: Path, extra: str = "") -> Path:
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        f"machines:\n  - {{name: sim0001, transport: sim, tags: [local], slots: 4{extra}}}\n"
    )
    return fleet


@pytest.fixture
def passing_plan(workdir: Path) -> Path:
    make_suite(workdir / "suites", "ok")
    return write_plan(workdir, "version: 1\nentries:\n  - {name: ok, dir: suites/ok}\n")


def test_an_old_finished_batch_goes_with_every_attempt_its_run_dirs_and_worker_log(
    workdir: Path, tmp_path: Path, state_dir: Path, cli: CliRunner
) -> None:
    make_suite(workdir / "suites", "ok")
    make_suite(workdir / "suites", "broken", FAILING_SCRIPT)
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - {name: ok, dir: suites/ok}
          - {name: broken, dir: suites/broken, retries: 1, retry_on: [failed]}
        """,
    )
    batch_id = finished_batch(cli)
    settle(tmp_path)
    runs = stored_runs(state_dir)
    assert sorted((run["item"], run["attempt"]) for run in runs.values()) == [
        ("broken", 1),
        ("broken", 2),
        ("ok", 1),
    ]
    run_dirs = [state_dir / "runs" / run_id for run_id in runs]
    worker_log = state_dir / "workers" / f"{batch_id}.log"
    assert all(run_dir.is_dir() for run_dir in run_dirs)
    assert worker_log.is_file()
    batches_before = bytes_on_disk(state_dir, "batches.json", "batches.journal")
    runs_before = bytes_on_disk(state_dir, "runs.json", "runs.journal")

    with month_later():
        result = cli("prune", "--older-than", "30d", "--json")

    assert result.code == 0, result.stderr
    envelope = result.json()
    assert (envelope["schema_version"], envelope["status"]) == ("v1", "ok")
    data = envelope["data"]
    assert {key: data[key] for key in ("dry_run", "removed", "kept", "runs_removed")} == {
        "dry_run": False,
        "removed": [batch_id],
        "kept": [],
        "runs_removed": 3,
    }
    assert data["left_behind"] == []
    assert data["created_before"].endswith("Z")
    assert stored_batches(state_dir) == {}
    assert stored_runs(state_dir) == {}
    assert not any(run_dir.exists() for run_dir in run_dirs)
    assert not worker_log.exists()
    assert bytes_on_disk(state_dir, "batches.json", "batches.journal") < batches_before
    assert bytes_on_disk(state_dir, "runs.json", "runs.journal") < runs_before
    assert cli("list", "--json").json()["data"]["batches"] == []


def test_an_unfinished_batch_is_kept_with_its_reason_while_a_finished_one_goes(
    workdir: Path, state_dir: Path, cli: CliRunner
) -> None:
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        "machines:\n"
        "  - {name: quick, transport: sim, tags: [local], slots: 4}\n"
        "  - {name: slow, transport: sim, tags: [slow], slots: 4, duration: 60m}\n"
    )
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")
    write_plan(
        workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t, tag: slow}\n", "slow.yaml"
    )
    finished = finished_batch(cli, "--fleet", str(fleet))
    started = cli("run", "slow.yaml", "--fleet", str(fleet), "--json")
    assert started.code == 0, started.stderr
    running = started.json()["data"]["batch"]["id"]
    # The finished batch's worker lets go of it before the prune, so the
    # assertions below see only what the prune did.
    wait_until(
        lambda: stored_batches(state_dir)[finished].get("lease") is None,
        what="the finished batch's worker to release it",
    )
    running_runs = {
        run_id for run_id, run in stored_runs(state_dir).items() if run["batch_id"] == running
    }
    assert running_runs

    with month_later():
        result = cli("prune", "--older-than", "30d", "--json")

    assert result.code == 0, result.stderr
    data = result.json()["data"]
    assert data["removed"] == [finished]
    assert data["kept"] == [{"id": running, "reason": "not finished"}]
    assert data["runs_removed"] == 1
    assert set(stored_batches(state_dir)) == {running}
    assert set(stored_runs(state_dir)) == running_runs
    assert cli("status", running, "--json").json()["data"]["batch"]["done"] is False


def test_dry_run_reports_what_would_go_and_changes_no_byte(
    passing_plan: Path, tmp_path: Path, state_dir: Path, cli: CliRunner
) -> None:
    batch_id = finished_batch(cli)
    settle(tmp_path)
    before = snapshot_dir(state_dir)
    assert any(name.startswith("runs/") for name in before)

    with month_later():
        result = cli("prune", "--older-than", "30d", "--dry-run", "--json")
        human = cli("prune", "--older-than", "30d", "--dry-run")

    assert result.code == human.code == 0
    data = result.json()["data"]
    assert (data["dry_run"], data["removed"], data["kept"], data["runs_removed"]) == (
        True,
        [batch_id],
        [],
        1,
    )
    assert "would remove 1 batch" in human.stdout
    assert "nothing changed" in human.stdout
    assert batch_id in human.stdout
    assert snapshot_dir(state_dir) == before


def test_young_batches_stay_and_zero_age_takes_every_finished_one(
    passing_plan: Path, tmp_path: Path, state_dir: Path, cli: CliRunner
) -> None:
    batch_id = finished_batch(cli)
    settle(tmp_path)
    before = snapshot_dir(state_dir)

    young = cli("prune", "--older-than", "30d")
    assert young.code == 0, young.stderr
    assert "nothing to prune" in young.stdout
    assert snapshot_dir(state_dir) == before

    everything = cli("prune", "--older-than", "0s")
    assert everything.code == 0, everything.stderr
    assert re.search(r"removed 1 batch created before .* \(1 run\)", everything.stdout)
    assert batch_id in everything.stdout
    assert stored_batches(state_dir) == {}


@pytest.mark.parametrize(
    "age", ["30", "30x", "-1d", "", "1.5d", "d", "12h30", "1m1d", "99999999999d"]
)
def test_a_bad_age_is_invalid_input_and_changes_nothing(
    age: str, workdir: Path, tmp_path: Path, state_dir: Path, cli: CliRunner
) -> None:
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")
    finished_batch(cli, "--fleet", str(sim_fleet(workdir)))
    settle(tmp_path)
    before = snapshot_dir(state_dir)

    result = cli("prune", "--older-than", age, "--json")

    assert result.code == 2
    assert result.stdout == ""
    error = result.error()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("--older-than: ")
    assert error["details"] == {"option": "--older-than"}
    assert snapshot_dir(state_dir) == before


def test_the_age_is_required(cli: CliRunner) -> None:
    result = cli("prune")
    assert result.code == 2
    assert "--older-than" in result.stderr


def test_an_empty_state_dir_prunes_nothing_and_writes_nothing(
    state_dir: Path, cli: CliRunner
) -> None:
    state_dir.mkdir()

    result = cli("prune", "--older-than", "0s", "--json")
    human = cli("prune", "--older-than", "30d")

    assert result.code == human.code == 0
    data = result.json()["data"]
    assert (data["removed"], data["kept"], data["runs_removed"]) == ([], [], 0)
    assert human.stdout.startswith("nothing to prune")
    assert list(state_dir.iterdir()) == []


def test_a_batch_retried_after_the_first_look_is_decided_again_and_kept(
    workdir: Path, tmp_path: Path, state_dir: Path, cli: CliRunner
) -> None:
    """The prune's first look (without a lock) sees a finished batch; a retry
    lands before it takes the batches lock; the batch must stay whole."""
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")
    fleet = sim_fleet(workdir, ", outcomes: {failed: 1.0}")
    batch_id = finished_batch(cli, "--fleet", str(fleet))
    settle(tmp_path)
    # The retried attempt then runs for an hour: the batch stays unfinished.
    sim_fleet(workdir, ", duration: 60m")
    settings = load_settings(str(state_dir), str(fleet))
    retrier = open_service(settings)
    pruner = open_service(settings)
    pruner = dataclasses.replace(pruner, clock=FakeClock(datetime.now(UTC) + timedelta(days=31)))
    removing: Callable[[], AbstractContextManager[Callable[[Collection[str]], None]]] = (
        pruner.batches.removing
    )

    @contextmanager
    def retried_first() -> Iterator[Callable[[Collection[str]], None]]:
        assert retrier.retry(batch_id).requeued == ["t"]
        with removing() as remove:
            yield remove

    pruner.batches.removing = retried_first  # type: ignore[method-assign]
    runs_before = set(stored_runs(state_dir))

    result = pruner.prune(timedelta(days=30), dry_run=False)

    assert result.removed == []
    assert [(kept.id, kept.reason) for kept in result.kept] == [(batch_id, "not finished")]
    assert result.runs_removed == 0
    assert stored_batches(state_dir)[batch_id]["items"]["t"]["attempt"] == 2
    assert runs_before < set(stored_runs(state_dir))
