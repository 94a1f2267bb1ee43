"""Every plan rule of SPEC §2, each with a bad plan: exit 2, a message naming
file, entry and field, and the state directory left byte-for-byte unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import (
    CliRunner,
    make_suite,
    snapshot_dir,
    stored_batches,
    wait_until,
    write_plan,
)

GOOD_ENTRIES = """
  - name: build
    dir: suites/build
"""

BAD_PLANS: dict[str, tuple[str, list[str]]] = {
    "version-not-1": (
        "version: 2\nentries:" + GOOD_ENTRIES,
        ["plan.yaml", "field 'version'", "version must be 1"],
    ),
    "entries-missing": ("version: 1\n", ["plan.yaml", "field 'entries'", "is required"]),
    "entries-not-a-list": (
        "version: 1\nentries: {name: build}\n",
        ["plan.yaml", "field 'entries'", "must be a list"],
    ),
    "entry-not-a-mapping": (
        "version: 1\nentries:\n  - just-a-string\n",
        ["plan.yaml", "entry #1", "must be a mapping"],
    ),
    "name-missing": (
        "version: 1\nentries:\n  - dir: suites/build\n",
        ["plan.yaml", "entry #1", "field 'name'", "is required"],
    ),
    "name-bad-pattern": (
        "version: 1\nentries:\n  - name: '-bad name'\n    dir: suites/build\n",
        ["plan.yaml", "entry '-bad name' (#1)", "field 'name'", "not a valid name"],
    ),
    "name-duplicate": (
        "version: 1\nentries:" + GOOD_ENTRIES + GOOD_ENTRIES,
        ["plan.yaml", "entry 'build' (#2)", "field 'name'", "duplicate of entry #1"],
    ),
    "dir-missing-field": (
        "version: 1\nentries:\n  - name: build\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'dir'", "is required"],
    ),
    "dir-does-not-exist": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/nowhere\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'dir'", "does not exist"],
    ),
    "dir-is-a-file": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build/run.sh\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'dir'", "is not a directory"],
    ),
    "machine-and-tag": (
        "version: 1\nentries:\n  - {name: build, dir: suites/build, machine: m1, tag: t}\n",
        ["plan.yaml", "entry 'build' (#1)", "machine/tag", "mutually exclusive"],
    ),
    "needs-unknown": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    needs: [biuld2]\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'needs'", "unknown entry 'biuld2'"],
    ),
    "needs-self": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    needs: [build]\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'needs'", "cannot need itself"],
    ),
    "needs-cycle": (
        """version: 1
entries:
  - {name: a, dir: suites/build, needs: [c]}
  - {name: b, dir: suites/build, needs: [a]}
  - {name: c, dir: suites/build, needs: [b]}
""",
        ["plan.yaml", "entry 'a' (#1)", "field 'needs'", "dependency cycle a -> c -> b -> a"],
    ),
    "unknown-entry-key": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    retires: 2\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'retires'", "did you mean 'retries'"],
    ),
    "unknown-top-level-key": (
        "version: 1\ndefualts: {}\nentries:" + GOOD_ENTRIES,
        ["plan.yaml", "field 'defualts'", "did you mean 'defaults'"],
    ),
    "unknown-defaults-key": (
        "version: 1\ndefaults: {timeuot: 5m}\nentries:" + GOOD_ENTRIES,
        ["plan.yaml", "field 'defaults.timeuot'", "did you mean 'timeout'"],
    ),
    "malformed-yaml": (
        "version: 1\nentries:\n  - name: build\n    dir: [unclosed\n",
        ["plan.yaml:5:1", "malformed YAML"],
    ),
    "duplicate-yaml-key": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    dir: other\n",
        ["plan.yaml:5:5", "duplicate key 'dir'"],
    ),
    "bad-duration": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    timeout: 10x\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'timeout'", "invalid duration '10x'"],
    ),
    "zero-duration": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    timeout: 0\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'timeout'", "must be positive"],
    ),
    "negative-retries": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    retries: -1\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'retries'", "between 0 and"],
    ),
    "retry-on-unknown": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    retry_on: [crash]\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'retry_on'", "unknown status 'crash'"],
    ),
    "env-reserved-name": (
        "version: 1\nentries:\n  - {name: build, dir: suites/build, env: {BATCHCTL_ITEM: x}}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'env'", "set by batchctl"],
    ),
    "env-bad-value": (
        "version: 1\nentries:\n  - name: build\n    dir: suites/build\n    env: {DEBUG: yes}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'env'", "quote it"],
    ),
    "not-a-mapping": ("- just\n- a list\n", ["plan.yaml", "must be a mapping"]),
    "matrix-empty-list": (
        "version: 1\nentries:\n  - {name: build, dir: suites/build, matrix: {py: []}}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'matrix.py'", "the list of values is empty"],
    ),
    "matrix-clashes-with-env": (
        "version: 1\nentries:\n"
        "  - {name: build, dir: suites/build, matrix: {py: ['3.11']}, env: {py: x}}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'matrix.py'", "also set in 'env'"],
    ),
    "dirs-matches-nothing": (
        "version: 1\nentries:\n  - {name: build, dirs: suites/none*/}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'dirs'", "'suites/none*/' matches no directory"],
    ),
    "dir-and-dirs": (
        "version: 1\nentries:\n  - {name: build, dir: suites/build, dirs: suites/*/}\n",
        ["plan.yaml", "entry 'build' (#1)", "field 'dir/dirs'", "mutually exclusive"],
    ),
    "needs-unknown-item": (
        "version: 1\nentries:\n"
        "  - {name: build, dir: suites/build, matrix: {py: ['3.11']}}\n"
        "  - {name: test, dir: suites/build, needs: ['build[py=3.12]']}\n",
        [
            "plan.yaml",
            "entry 'test' (#2)",
            "field 'needs'",
            "unknown item 'build[py=3.12]' of entry 'build' (did you mean 'build[py=3.11]'?)",
        ],
    ),
}


@pytest.fixture
def existing_state(workdir: Path, cli: CliRunner, state_dir: Path) -> dict[str, bytes]:
    """A state directory holding one finished batch, snapshotted, so 'no
    change' means something (finished: no worker writes behind our back)."""
    make_suite(workdir / "suites", "build")
    write_plan(workdir, "version: 1\nentries:" + GOOD_ENTRIES, name="good.yaml")
    assert cli("run", "good.yaml", "--staging", "s1", "--wait", "--quiet").code == 0
    # The worker gives its lease back just after the batch is done.
    wait_until(
        lambda: all(batch.get("lease") is None for batch in stored_batches(state_dir).values()),
        what="the worker to let go of the batch",
    )
    return snapshot_dir(state_dir)


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plan_is_refused_with_exit_2_and_no_state_change(
    case: str, workdir: Path, cli: CliRunner, state_dir: Path, existing_state: dict[str, bytes]
) -> None:
    text, expected = BAD_PLANS[case]
    write_plan(workdir, text)

    result = cli("run", "plan.yaml", "--staging", "s1")

    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} missing from: {result.stderr}"
    assert result.stdout == ""
    assert snapshot_dir(state_dir) == existing_state


def test_every_problem_is_reported_at_once(workdir: Path, cli: CliRunner) -> None:
    make_suite(workdir / "suites", "build")
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - name: build
            dir: suites/build
            timeout: soon
          - name: test
            dir: suites/build
            needs: [nope]
            colour: red
        """,
    )

    result = cli("run", "plan.yaml", "--json")

    assert result.code == 2
    error = result.error()["error"]
    assert error["code"] == "invalid_plan"
    problems = error["details"]["problems"]
    assert len(problems) == 3
    assert any("'build' (#1): field 'timeout'" in problem for problem in problems)
    assert any("'test' (#2): field 'colour'" in problem for problem in problems)
    assert any(
        "'test' (#2): field 'needs': unknown entry 'nope'" in problem for problem in problems
    )


def test_empty_entries_is_an_empty_plan(workdir: Path, cli: CliRunner, state_dir: Path) -> None:
    write_plan(workdir, "version: 1\nentries: []\n")

    result = cli("run", "plan.yaml", "--json")

    assert result.code == 2
    assert result.error()["error"]["code"] == "empty_plan"
    assert "plan.yaml" in result.error()["error"]["message"]
    assert not state_dir.exists()


def test_empty_file_is_an_empty_plan(workdir: Path, cli: CliRunner) -> None:
    write_plan(workdir, "# nothing here\n")

    result = cli("run", "plan.yaml")

    assert result.code == 2
    assert "plan.yaml: empty plan" in result.stderr


def test_missing_plan_file_names_the_file(workdir: Path, cli: CliRunner) -> None:
    result = cli("run", "missing.yaml")

    assert result.code == 2
    assert "missing.yaml: plan file not found" in result.stderr


def test_dry_run_validates_dirs_and_writes_nothing(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    write_plan(workdir, "version: 1\nentries:\n  - name: build\n    dir: suites/gone\n")

    result = cli("run", "plan.yaml", "--dry-run")

    assert result.code == 2
    assert "field 'dir'" in result.stderr
    assert not state_dir.exists()
