"""The example plan the README and `make demo` use is valid and complete."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import run_batchctl

REPO = Path(__file__).resolve().parents[2]


def test_the_example_plan_validates_with_every_suite_in_place(state_dir: Path) -> None:
    result = run_batchctl("run", "plans/example.yaml", "--dry-run", "--json", cwd=REPO)

    assert result.code == 0, result.stderr
    items = result.json()["data"]["items"]
    assert [item["name"] for item in items] == ["build", "unit", "lint", "package"]
    for item in items:
        entrypoint = REPO / "plans" / item["dir"] / "run.sh"
        assert os.access(entrypoint, os.X_OK), entrypoint
    assert not state_dir.exists()  # a dry run writes nothing
