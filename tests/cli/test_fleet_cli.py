"""The fleet file and `batchctl machines`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import CliRunner, blocking_script, make_suite, snapshot_dir, write_plan


def test_default_fleet_is_this_host(cli: CliRunner) -> None:
    result = cli("machines", "--json")

    assert result.code == 0
    [machine] = result.json()["data"]["machines"]
    assert machine["name"] == "local"
    assert machine["tags"] == ["local"]
    assert machine["slots"] == os.cpu_count()
    assert (machine["state"], machine["runs"]) == ("idle", [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "machines:\n  - {name: a, slots: 0}\n",
            ["fleet.yaml", "machine 'a' (#1)", "field 'slots'"],
        ),
        (
            "machines:\n  - {name: a, transport: telnet}\n",
            ["machine 'a' (#1)", "field 'transport'", "telnet"],
        ),
        (
            "machines:\n  - {name: a, tagz: [x]}\n",
            ["machine 'a' (#1)", "field 'tagz'", "unknown key"],
        ),
        (
            "machines:\n  - {name: a}\n  - {name: a}\n",
            ["machine 'a' (#2)", "duplicate of machine #1"],
        ),
        ("machines:\n  - {name: a, os: beos}\n", ["machine 'a' (#1)", "field 'os'"]),
        (
            "machines:\n  - {name: hpc, transport: slurm}\n",
            ["machine 'hpc' (#1)", "field 'transport'", "needs 'shared_dir'"],
        ),
        (
            "machines:\n  - {name: hpc, transport: slurm, shared_dir: scratch}\n",
            ["machine 'hpc' (#1)", "'scratch' must be an absolute path"],
        ),
        (
            "machines:\n  - {name: box, transport: local, partition: debug}\n",
            ["machine 'box' (#1)", "partition: only for slurm machines"],
        ),
        (
            "machines:\n  - {name: hpc, transport: slurm, shared_dir: /s, host: h}\n",
            ["machine 'hpc' (#1)", "host: only for ssh machines"],
        ),
        ("machines: [\n", ["fleet.yaml:", "malformed YAML"]),
        ("machines: []\n", ["fleet.yaml", "lists no machine"]),
        ("hosts: []\n", ["fleet.yaml", "'hosts'"]),
    ],
)
def test_bad_fleet_file_is_exit_2_naming_file_machine_and_field(
    workdir: Path, cli: CliRunner, state_dir: Path, text: str, expected: list[str]
) -> None:
    (workdir / "fleet.yaml").write_text(text)
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a}\n")

    for args in (("machines",), ("run", "plan.yaml")):
        result = cli(*args, "--fleet", "fleet.yaml")
        assert result.code == 2, result.stderr
        for fragment in expected:
            assert fragment in result.stderr, (fragment, result.stderr)
        assert "Traceback" not in result.stderr
    assert snapshot_dir(state_dir) == {}


def test_machines_shows_busy_machines_and_their_runs(workdir: Path, cli: CliRunner) -> None:
    (workdir / "fleet.yaml").write_text(
        "machines:\n"
        "  - {name: box-1, transport: local, tags: [linux], slots: 1}\n"
        "  - {name: box-2, transport: local, tags: [linux, gpu], slots: 2}\n"
    )
    make_suite(workdir / "suites", "t", blocking_script(workdir / "never"))
    write_plan(workdir, "version: 1\nentries:\n  - {name: on-gpu, dir: suites/t, tag: gpu}\n")
    batch_id = cli("run", "plan.yaml", "--fleet", "fleet.yaml", "--json").json()["data"]["batch"][
        "id"
    ]

    result = cli("machines", "--fleet", "fleet.yaml", "--json")

    machines = {m["name"]: m for m in result.json()["data"]["machines"]}
    assert (machines["box-1"]["state"], machines["box-1"]["runs"]) == ("idle", [])
    assert machines["box-2"]["tags"] == ["linux", "gpu"]
    [held] = machines["box-2"]["runs"]
    assert (held["batch_id"], held["item"]) == (batch_id, "on-gpu")
    human = cli("machines", "--fleet", "fleet.yaml")
    assert "box-2" in human.stdout
    assert f"{batch_id}/on-gpu" in human.stdout


def test_a_full_machine_is_busy(workdir: Path, cli: CliRunner) -> None:
    (workdir / "fleet.yaml").write_text("machines:\n  - {name: solo, tags: [local], slots: 1}\n")
    make_suite(workdir / "suites", "t", blocking_script(workdir / "never"))
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: a, dir: suites/t}\n  - {name: b, dir: suites/t}\n",
    )
    view = cli("run", "plan.yaml", "--fleet", "fleet.yaml", "--json").json()["data"]["batch"]

    machines = cli("machines", "--fleet", "fleet.yaml", "--json").json()["data"]["machines"]

    assert machines[0]["state"] == "busy"
    assert [item["outcome"] for item in view["items"]] == ["running", "queued"]


def test_the_fleet_file_in_the_state_dir_is_used_when_none_is_named(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    state_dir.mkdir()
    (state_dir / "fleet.yaml").write_text("machines:\n  - {name: resident, tags: [x], slots: 3}\n")

    machines = cli("machines", "--json").json()["data"]

    assert machines["source"] == str(state_dir / "fleet.yaml")
    assert [m["name"] for m in machines["machines"]] == ["resident"]


def test_a_bad_queue_timeout_is_invalid_input(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a}\n")

    result = cli("run", "plan.yaml", "--queue-timeout", "soon", "--json")

    assert result.code == 2
    assert "--queue-timeout" in result.error()["error"]["message"]
    assert not state_dir.exists()

    accepted = cli("run", "plan.yaml", "--queue-timeout", "90m", "--json")
    assert accepted.json()["data"]["batch"]["queue_timeout_s"] == 5400


TWO_MACHINES = (
    "machines:\n"
    "  - {name: gpu-01, transport: local, tags: [gpu], slots: 1}\n"
    "  - {name: gpu-02, transport: local, tags: [gpu], slots: 1}\n"
)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("limits: {gpu: 0}\n", ["fleet.yaml", "field 'limits.gpu'", "positive whole number"]),
        ("limits: {gpu: -2}\n", ["field 'limits.gpu'", "-2"]),
        ("limits: {gpu: two}\n", ["field 'limits.gpu'", "'two'"]),
        ("limits: {gpu: true}\n", ["field 'limits.gpu'", "True"]),
        ("limits: {gpu: 1.5}\n", ["field 'limits.gpu'", "1.5"]),
        ("limits: {'bad tag': 1}\n", ["field 'limits'", "'bad tag' is not a valid tag name"]),
        ("limits: [gpu]\n", ["field 'limits'", "must be a mapping"]),
    ],
)
def test_bad_limits_are_exit_2_naming_file_and_field(
    workdir: Path, cli: CliRunner, state_dir: Path, limits: str, expected: list[str]
) -> None:
    (workdir / "fleet.yaml").write_text(limits + TWO_MACHINES)
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a, tag: gpu}\n")

    for args in (
        ("machines",),
        ("run", "plan.yaml"),
        ("machines", "drain", "gpu-01", "--reason", "x"),
    ):
        result = cli(*args, "--fleet", "fleet.yaml")
        assert result.code == 2, result.stderr
        for fragment in expected:
            assert fragment in result.stderr, (fragment, result.stderr)
    assert snapshot_dir(state_dir) == {}


def test_unknown_machine_names_are_exit_3_with_close_names_and_change_nothing(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    (workdir / "fleet.yaml").write_text(TWO_MACHINES)

    for command in (("drain", "gpu-1", "--reason", "x"), ("resume", "gpu-1")):
        result = cli("machines", *command, "--fleet", "fleet.yaml", "--json")
        assert result.code == 3, result.stderr
        error = result.error()["error"]
        assert error["code"] == "not_found"
        assert "'gpu-1'" in error["message"]
        assert error["details"]["close"] == ["gpu-01", "gpu-02"]
    human = cli("machines", "drain", "gpu-1", "--reason", "x", "--fleet", "fleet.yaml")
    assert human.code == 3
    assert "did you mean gpu-01, gpu-02?" in human.stderr
    assert cli("machines", "drain", "gpu-01", "--reason", " ", "--fleet", "fleet.yaml").code == 2
    assert not (state_dir / "machines.json").exists()


def test_drain_is_idempotent_private_and_resume_undoes_it(
    workdir: Path, cli: CliRunner, state_dir: Path
) -> None:
    (workdir / "fleet.yaml").write_text(TWO_MACHINES)
    fleet = ("--fleet", "fleet.yaml")

    first = cli("machines", "drain", "gpu-01", "--reason", "fan noise", *fleet, "--json")
    again = cli("machines", "drain", "gpu-01", "--reason", "fan replaced", *fleet, "--json")

    assert (first.code, first.json()["data"]["changed"]) == (0, True)
    assert (again.code, again.json()["data"]["changed"]) == (0, False)
    assert again.json()["data"]["drain"]["since"] == first.json()["data"]["drain"]["since"]
    stored = state_dir / "machines.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    listing = {m["name"]: m for m in cli("machines", *fleet, "--json").json()["data"]["machines"]}
    assert listing["gpu-01"]["state"] == "drained"
    assert listing["gpu-01"]["drain"]["reason"] == "fan replaced"
    assert (listing["gpu-02"]["state"], listing["gpu-02"]["drain"]) == ("idle", None)
    assert "drained: fan replaced" in cli("machines", *fleet).stdout

    resumed = cli("machines", "resume", "gpu-01", *fleet)
    assert resumed.code == 0
    assert "resumed gpu-01" in resumed.stdout
    assert cli("machines", "resume", "gpu-01", *fleet, "--json").json()["data"]["changed"] is False
    listing = {m["name"]: m for m in cli("machines", *fleet, "--json").json()["data"]["machines"]}
    assert (listing["gpu-01"]["state"], listing["gpu-01"]["drain"]) == ("idle", None)


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ("health: {failures: 0}\n", ["fleet.yaml", "field 'health.failures'", "greater than"]),
        ("health: {max_quarantined: 1.5}\n", ["field 'health.max_quarantined'", "less than"]),
        ("health: {max_quarantined: half}\n", ["field 'health.max_quarantined'"]),
        ("health: {check_every: soon}\n", ["field 'health.check_every'", "'soon'"]),
        ("health: {check_every: 1m, check_every_max: 10s}\n", ["'health.check_every_max'"]),
        ("health: {retries: 3}\n", ["field 'health.retries'", "unknown key", "failures"]),
        ("health: {checks: {'bad tag': 'true'}}\n", ["'bad tag' is not a valid tag name"]),
        ("health: {checks: {gpu: ' '}}\n", ["field 'health.checks.gpu'", "empty"]),
        ("health: [3]\n", ["field 'health'", "must be a mapping"]),
    ],
)
def test_bad_health_settings_are_exit_2_naming_file_and_field(
    workdir: Path, cli: CliRunner, state_dir: Path, health: str, expected: list[str]
) -> None:
    (workdir / "fleet.yaml").write_text(health + TWO_MACHINES)

    for args in (("machines",), ("machines", "resume", "gpu-01")):
        result = cli(*args, "--fleet", "fleet.yaml")
        assert result.code == 2, result.stderr
        for fragment in expected:
            assert fragment in result.stderr, (fragment, result.stderr)
        assert "Traceback" not in result.stderr
    assert snapshot_dir(state_dir) == {}


POOL = "    provision: ./up.sh\n    deprovision: ./down.sh\n"


@pytest.mark.parametrize(
    ("pools", "expected"),
    [
        (
            "pools:\n  - {name: cloud, tags: [x]}\n",
            ["pool 'cloud' (#1)", "'provision'", "required"],
        ),
        ("pools:\n  - name: cloud\n    max: 0\n" + POOL, ["field 'max'", "greater than"]),
        ("pools:\n  - name: cloud\n    min: 3\n    max: 2\n" + POOL, ["field 'min'", "3 > 2"]),
        ("pools:\n  - name: cloud\n    idle_timeout: soon\n" + POOL, ["field 'idle_timeout'"]),
        ("pools:\n  - name: gpu-01\n" + POOL, ["field 'name'", "a machine has that name"]),
        ("pools:\n  - name: cloud\n    size: 3\n" + POOL, ["field 'size'", "unknown key"]),
        ("pools:\n  - name: cloud\n    tags: ['a b']\n" + POOL, ["'a b' is not a valid name"]),
        (
            "pools:\n  - name: cloud\n    provision: ' '\n    deprovision: x\n",
            ["the command is empty"],
        ),
    ],
)
def test_bad_pools_are_exit_2_naming_file_pool_and_field(
    workdir: Path, cli: CliRunner, state_dir: Path, pools: str, expected: list[str]
) -> None:
    (workdir / "fleet.yaml").write_text(TWO_MACHINES + pools)

    result = cli("machines", "--fleet", "fleet.yaml")

    assert result.code == 2, result.stderr
    for fragment in ["fleet.yaml", *expected]:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert snapshot_dir(state_dir) == {}


@pytest.mark.parametrize(
    ("pools", "expected"),
    [
        (
            "pools:\n  - name: cloud\n    tags: [gpu]\n    env_pass: ['not a name']\n" + POOL,
            ["pool 'cloud' (#1)", "field 'env_pass'", "'not a name' is not a valid"],
        ),
        (
            "pools:\n  - name: cloud\n    tags: [gpu]\n    env_pass: [BATCHCTL_X]\n" + POOL,
            ["pool 'cloud' (#1)", "field 'env_pass'", "set by batchctl"],
        ),
        (
            "pools:\n  - name: cloud\n    tags: [gpu, 'a b']\n" + POOL,
            ["pool 'cloud' (#1)", "field 'tags.1'", "'a b' is not a valid name"],
        ),
        (
            "pools:\n  - name: 'bad name'\n    tags: [gpu]\n" + POOL,
            ["pool 'bad name' (#1)", "field 'name'", "is not a valid name"],
        ),
        (
            "pools:\n  - name: gpu\n    tags: [gpu]\n" + POOL,
            ["pool 'gpu' (#1)", "field 'name'", "'gpu-01'", "gpu-1, gpu-2"],
        ),
        (
            f"pools:\n  - name: {'p' * 121}\n    tags: [gpu]\n" + POOL,
            ["field 'name'", "longer than 120 characters"],
        ),
    ],
)
def test_pool_fields_are_checked_as_a_machines_when_the_fleet_is_read(
    workdir: Path, cli: CliRunner, state_dir: Path, pools: str, expected: list[str]
) -> None:
    (workdir / "fleet.yaml").write_text(TWO_MACHINES + pools)
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a, tag: gpu}\n")

    for args in (("machines",), ("run", "plan.yaml", "--dry-run"), ("run", "plan.yaml")):
        result = cli(*args, "--fleet", "fleet.yaml")
        assert result.code == 2, (args, result.stderr)
        for fragment in ["fleet.yaml", *expected]:
            assert fragment in result.stderr, (fragment, result.stderr)
        assert "internal error" not in result.stderr
    assert snapshot_dir(state_dir) == {}
