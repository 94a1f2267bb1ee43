"""Artifacts between items: an entry's `inputs` receive the artifacts of the
entries it needs, in $BATCHCTL_INPUTS_DIR/<item>/, wherever it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import make_suite, run_batchctl, write_plan
from tests.sshd import Sshd

BUILD = (
    "#!/bin/sh\nset -e\n"
    'mkdir -p "$BATCHCTL_ARTIFACTS_DIR/dist"\n'
    'echo "wheel built by $BATCHCTL_RUN_ID" > "$BATCHCTL_ARTIFACTS_DIR/dist/pkg.whl"\n'
)
CONSUME = (
    "#!/bin/sh\nset -e\n"
    'cat "$BATCHCTL_INPUTS_DIR/build/dist/pkg.whl" > "$BATCHCTL_ARTIFACTS_DIR/got.txt"\n'
    'ls "$BATCHCTL_INPUTS_DIR" > "$BATCHCTL_ARTIFACTS_DIR/inputs.txt"\n'
)


def items_of(result: Any) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in result.json()["data"]["batch"]["items"]}


def test_a_build_artifact_reaches_a_local_and_an_ssh_dependent(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: box-local, transport: local, tags: [local], slots: 2}\n"
        + sshd.machine("box-ssh")
    )
    make_suite(workdir / "suites", "build", BUILD)
    make_suite(workdir / "suites", "consume", CONSUME)
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: build, dir: suites/build, machine: box-local}\n"
        "  - {name: lint, dir: suites/build, machine: box-local}\n"
        "  - name: test-here\n    dir: suites/consume\n    machine: box-local\n"
        "    needs: [build, lint]\n    inputs: [build]\n"
        "  - name: test-there\n    dir: suites/consume\n    machine: box-ssh\n"
        "    needs: [build]\n    inputs: [build]\n",
    )

    ran = run_batchctl(
        "run",
        "plan.yaml",
        "--wait",
        "--json",
        cwd=workdir,
        env={"BATCHCTL_FLEET": str(workdir / "fleet.yaml")},
    )

    assert ran.code == 0, ran.stderr
    items = items_of(ran)
    built = f"wheel built by {items['build']['run_id']}\n"
    for name in ("test-here", "test-there"):
        artifacts = Path(items[name]["run"]["artifacts_path"])
        assert (artifacts / "got.txt").read_text() == built, name
        # Only the inputs it names, not everything it needs.
        assert (artifacts / "inputs.txt").read_text() == "build\n", name
    assert items["test-there"]["machine"] == "box-ssh"


def test_inputs_must_be_needed(workdir: Path, state_dir: Path) -> None:
    make_suite(workdir / "suites", "t")
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: build, dir: suites/t}\n"
        "  - {name: test, dir: suites/t, inputs: [build]}\n",
    )
    refused = run_batchctl("run", "plan.yaml", cwd=workdir)
    assert refused.code == 2
    assert "entry 'test' (#2): field 'inputs': 'build' is not in needs" in refused.stderr


def test_inputs_naming_a_matrix_entry_take_every_item_of_it() -> None:
    from batchctl.model.plan import load_plan_text

    plan = load_plan_text(
        "version: 1\nentries:\n"
        "  - {name: build, dir: d, matrix: {py: ['3.11', '3.12']}}\n"
        "  - {name: test, dir: d, needs: [build], inputs: [build]}\n",
        path="plan.yaml",
        base_dir=Path("/x"),
        source="inline",
        env_tag=None,
    )
    test = next(entry for entry in plan.entries if entry.name == "test")
    assert test.inputs == ("build[py=3.11]", "build[py=3.12]")
    assert test.needs == test.inputs
