"""A run's environment is the same on every transport (model/environment.py):
the machine's base, the controller variables passed through by name, the
entry's env and batchctl's own; nothing else of the controller's."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

from batchctl.model.environment import BASE_VARIABLES
from tests.helpers import make_suite, run_batchctl, write_plan
from tests.sshd import Sshd

PRINT_ENV = '#!/bin/sh\nenv > "$BATCHCTL_ARTIFACTS_DIR/env.txt"\n'
# Differ by run or by machine by design; the rest must be equal.
PER_RUN = {
    "BATCHCTL_ITEM",
    "BATCHCTL_RUN_ID",
    "BATCHCTL_MACHINE",
    "BATCHCTL_ARTIFACTS_DIR",
    "PWD",  # the shell running run.sh sets it
}


def environment_of(item: dict[str, Any]) -> dict[str, str]:
    text = (Path(item["run"]["artifacts_path"]) / "env.txt").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def run_env_plan(workdir: Path, fleet_text: str, controller: dict[str, str]) -> dict[str, Any]:
    (workdir / "fleet.yaml").write_text(fleet_text)
    make_suite(workdir / "suites", "env", PRINT_ENV)
    write_plan(
        workdir,
        "version: 1\n"
        "defaults:\n  env: {FROM_PLAN: planned value}\n  env_pass: [PASSED_BY_PLAN]\n"
        "entries:\n"
        "  - {name: here, dir: suites/env, machine: box-local}\n"
        "  - {name: there, dir: suites/env, machine: box-ssh}\n",
    )
    result = run_batchctl(
        "run",
        "plan.yaml",
        "--wait",
        "--json",
        cwd=workdir,
        env={"BATCHCTL_FLEET": str(workdir / "fleet.yaml"), **controller},
    )
    assert result.code == 0, result.stderr
    return {item["name"]: item for item in result.json()["data"]["batch"]["items"]}


def test_local_and_ssh_runs_get_the_same_environment(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    fleet = (
        "env_pass: [PASSED_BY_FLEET]\n"
        "machines:\n"
        "  - {name: box-local, transport: local, tags: [local], slots: 1}\n"
        + sshd.machine("box-ssh", extra="env_pass: [PASSED_BY_MACHINE]")
    )
    controller = {
        "PASSED_BY_PLAN": "from the plan's list",
        "PASSED_BY_FLEET": "from the fleet's list",
        "PASSED_BY_MACHINE": "from the machine's list",
        "CI_SECRET_TOKEN": "must not leak",
    }
    items = run_env_plan(workdir, fleet, controller)
    here, there = environment_of(items["here"]), environment_of(items["there"])

    assert here["FROM_PLAN"] == there["FROM_PLAN"] == "planned value"
    assert here["PASSED_BY_PLAN"] == there["PASSED_BY_PLAN"] == "from the plan's list"
    assert here["PASSED_BY_FLEET"] == there["PASSED_BY_FLEET"] == "from the fleet's list"
    # A machine's own list is for that machine's runs.
    assert there["PASSED_BY_MACHINE"] == "from the machine's list"
    assert "PASSED_BY_MACHINE" not in here
    assert "CI_SECRET_TOKEN" not in here
    assert "CI_SECRET_TOKEN" not in there
    # Beyond the machine's base (which the sshd's login may set differently:
    # it has no LANG here), the same names and values on both sides, but for
    # those that name the run or the machine.
    assert {"PATH", "HOME"} <= set(here) & set(there)
    chosen = {
        "FROM_PLAN",
        "PASSED_BY_PLAN",
        "PASSED_BY_FLEET",
        "BATCHCTL_BATCH_ID",
        "BATCHCTL_ATTEMPT",
        "BATCHCTL_STAGING",
    }
    assert set(here) - PER_RUN - set(BASE_VARIABLES) == chosen
    assert set(there) - PER_RUN - set(BASE_VARIABLES) == chosen | {"PASSED_BY_MACHINE"}
    for name in chosen:
        assert here[name] == there[name], name
    # Each machine's own HOME: the controller's (the tests give it a home of
    # its own) and the ssh login's.
    assert here["HOME"] == os.environ["HOME"]
    assert there["HOME"] == pwd.getpwuid(os.getuid()).pw_dir


def test_a_local_run_gets_only_the_base_of_the_controller_environment(
    workdir: Path, state_dir: Path
) -> None:
    fleet = "machines:\n  - {name: box-local, transport: local, tags: [local]}\n"
    (workdir / "fleet.yaml").write_text(fleet)
    make_suite(workdir / "suites", "env", PRINT_ENV)
    write_plan(workdir, "version: 1\nentries:\n  - {name: here, dir: suites/env}\n")
    result = run_batchctl(
        "run",
        "plan.yaml",
        "--wait",
        "--json",
        cwd=workdir,
        env={
            "BATCHCTL_FLEET": str(workdir / "fleet.yaml"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(workdir),
            "UNLISTED": "stays with the controller",
        },
    )
    assert result.code == 0, result.stderr
    env = environment_of(result.json()["data"]["batch"]["items"][0])
    assert env["LANG"] == "C.UTF-8"
    assert env["TMPDIR"] == str(workdir)
    assert "UNLISTED" not in env
    assert not {name for name in env if name.startswith("PYTEST")}


def test_env_pass_names_are_checked(workdir: Path, state_dir: Path) -> None:
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: a, dir: suites/t, env_pass: [BATCHCTL_TOKEN]}\n"
        "  - {name: b, dir: suites/t, env_pass: [GOOD, GOOD]}\n"
        "  - {name: c, dir: suites/t, env_pass: ['not a name']}\n",
    )
    result = run_batchctl("run", "plan.yaml", "--dry-run", cwd=workdir)
    assert result.code == 2
    assert "entry 'a' (#1): field 'env_pass': 'BATCHCTL_TOKEN': names starting with" in (
        result.stderr
    )
    assert "entry 'b' (#2): field 'env_pass': 'GOOD' is listed twice" in result.stderr
    assert "entry 'c' (#3): field 'env_pass': 'not a name' is not a valid" in result.stderr


def test_fleet_env_pass_names_are_checked(workdir: Path, state_dir: Path) -> None:
    (workdir / "fleet.yaml").write_text(
        "env_pass: [1PASS]\n"
        "machines:\n  - {name: m, transport: local, tags: [local], env_pass: [BATCHCTL_X]}\n"
    )
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")
    result = run_batchctl(
        "run", "plan.yaml", "--dry-run", "--fleet", str(workdir / "fleet.yaml"), cwd=workdir
    )
    assert result.code == 2
    assert "field 'env_pass'" in result.stderr
    assert "'1PASS' is not a valid environment variable name" in result.stderr
    assert not (state_dir / "batches.json").exists()
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: m, transport: local, tags: [local], env_pass: [BATCHCTL_X]}\n"
    )
    result = run_batchctl(
        "run", "plan.yaml", "--dry-run", "--fleet", str(workdir / "fleet.yaml"), cwd=workdir
    )
    assert result.code == 2
    assert "machine 'm' (#1): field 'env_pass': 'BATCHCTL_X': names starting with" in (
        result.stderr
    )


def test_a_nul_in_an_env_or_matrix_value_is_a_plan_problem(workdir: Path, state_dir: Path) -> None:
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        '  - {name: a, dir: suites/t, env: {X: "a\\0b"}}\n'
        '  - {name: b, dir: suites/t, matrix: {Y: ["c\\0d"]}}\n',
    )
    result = run_batchctl("run", "plan.yaml", cwd=workdir)
    assert result.code == 2, result.stderr
    assert "entry 'a' (#1): field 'env': X: value must not contain a NUL character" in (
        result.stderr
    )
    assert "entry 'b' (#2): field 'matrix.Y': a value must not contain a NUL character" in (
        result.stderr
    )
    assert not (state_dir / "batches.json").exists()
