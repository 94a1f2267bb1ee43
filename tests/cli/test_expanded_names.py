"""Items named ``test[py=3.11,shard=1]`` come out whole wherever batchctl
writes a name: rich tables (which would read the brackets as markup), the
dry run, GitHub annotations (where a comma separates properties) and
error messages."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from batchctl.cli.events import github_annotations
from batchctl.cli.render import batch_table
from batchctl.model.views import BatchView
from tests.helpers import CliRunner, make_suite, write_plan

PLAN = """
version: 1
entries:
  - {name: test, dir: suites/ok, matrix: {py: ["3.11", "3.12"], shard: [1, 2]}}
  - {name: unit, dirs: tests/*/}
  - {name: report, dir: suites/ok, needs: [test, "unit[api]"]}
"""


@pytest.fixture
def expanding_plan(workdir: Path) -> Path:
    make_suite(workdir / "suites", "ok")
    make_suite(workdir / "tests", "api")
    make_suite(workdir / "tests", "core")
    return write_plan(workdir, PLAN)


def test_the_dry_run_shows_every_name_whole_and_needs_in_short(
    expanding_plan: Path, cli: CliRunner
) -> None:
    result = cli("run", "plan.yaml", "--dry-run")

    assert result.code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[5:]}
    assert list(rows) == [
        "test[py=3.11,shard=1]",
        "test[py=3.11,shard=2]",
        "test[py=3.12,shard=1]",
        "test[py=3.12,shard=2]",
        "unit[api]",
        "unit[core]",
        "report",
    ]
    assert rows["unit[api]"].split()[1] == "tests/api"
    assert "test (all 4), unit[api]" in rows["report"]


def test_the_dry_run_json_lists_every_needed_item(expanding_plan: Path, cli: CliRunner) -> None:
    result = cli("run", "plan.yaml", "--dry-run", "--json")

    assert result.code == 0, result.stderr
    report = result.json()["data"]["items"][-1]
    assert report["needs"] == [
        "test[py=3.11,shard=1]",
        "test[py=3.11,shard=2]",
        "test[py=3.12,shard=1]",
        "test[py=3.12,shard=2]",
        "unit[api]",
    ]


def test_a_glob_item_without_an_entrypoint_is_refused_by_the_dry_run(
    expanding_plan: Path, workdir: Path, cli: CliRunner
) -> None:
    (workdir / "tests" / "helpers").mkdir()

    result = cli("run", "plan.yaml", "--dry-run")

    assert result.code == 2
    assert "1 of 8 items would be skipped: unit[helpers] (entrypoint_missing)" in result.stderr


def item(name: str, outcome: str, **run: Any) -> dict[str, Any]:
    return {
        "name": name,
        "selector": "tag:local",
        "needs": [],
        "state": "dispatched",
        "outcome": outcome,
        "attempt": 1,
        "run_id": "r1",
        "machine": "local",
        "error_code": None,
        "reason": None,
        "blame": None,
        "history": [],
        "run": {
            "id": "r1",
            "status": "failed",
            "exit_code": 3,
            "error_code": None,
            "message": None,
            "started_at": None,
            "ended_at": None,
            "log_path": "/l",
            "artifacts_path": "/a",
            **run,
        },
    }


def test_a_terminal_table_prints_bracketed_names_as_they_are() -> None:
    view = BatchView.model_validate(
        {
            "id": "b",
            "plan_hash": "h",
            "staging": "s",
            "source": "inline",
            "created_by": "me",
            "created_at": "2026-01-01T00:00:00Z",
            "expected_count": 2,
            "done": True,
            "cancelled": False,
            "queue_timeout_s": 60,
            "counts": {"failed": 2},
            "items": [
                item("test[py=3.11,shard=1]", "failed"),
                item("unit[api]", "failed"),
            ],
        }
    )
    console = Console(file=io.StringIO(), force_terminal=True, width=200, color_system=None)

    console.print(batch_table(view))

    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "test[py=3.11,shard=1]" in printed
    assert "unit[api]" in printed


def test_github_annotations_escape_the_commas_of_a_matrix_name() -> None:
    document = {"items": [item("test[py=3.11,shard=1]", "failed", message="a\nb")]}

    [line] = github_annotations(document)

    assert line == (
        "::error title=test[py=3.11%2Cshard=1] failed::test[py=3.11,shard=1]#1 on local: exit 3"
    )


def test_github_annotations_keep_a_percent_of_an_encoded_value() -> None:
    document = {"items": [item("db[IMAGE=postgres%3A15]", "failed")]}

    [line] = github_annotations(document)

    assert line.startswith(
        "::error title=db[IMAGE=postgres%253A15] failed::db[IMAGE=postgres%253A15]#1"
    )
