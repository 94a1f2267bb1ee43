"""Runs over ssh against a real sshd on 127.0.0.1 (the "remote" machine is
this host, reached only through ssh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchctl.transports.processes import pid_alive
from tests.helpers import blocking_script, make_suite, run_batchctl, wait_until, write_plan
from tests.sshd import Sshd, free_port

REPORT = (
    "#!/bin/sh\n"
    'echo "running $BATCHCTL_ITEM on $BATCHCTL_MACHINE in $(pwd)"\n'
    'printf \'%s\' "$WEIRD" > "$BATCHCTL_ARTIFACTS_DIR/weird.txt"\n'
    'mkdir -p "$BATCHCTL_ARTIFACTS_DIR/nested"\n'
    'echo deep > "$BATCHCTL_ARTIFACTS_DIR/nested/file"\n'
)
# A value that would run a command if any layer failed to quote it.
WEIRD = 'it\'s a "test" $(touch pwned) `touch pwned2` ; echo nope'


def items_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in view["items"]}


def fleet(workdir: Path, *machines: str) -> dict[str, str]:
    path = workdir / "fleet.yaml"
    path.write_text("machines:\n" + "".join(machines))
    return {"BATCHCTL_FLEET": str(path)}


def test_a_plan_runs_to_passed_over_ssh_with_logs_and_artifacts(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    env = fleet(workdir, sshd.machine())
    make_suite(workdir / "suites", "report", REPORT)
    make_suite(workdir / "suites", "bad", "#!/bin/sh\necho failing >&2\nexit 7\n")
    plan = (
        "version: 1\nentries:\n"
        "  - name: report\n    dir: suites/report\n"
        f"    env: {{WEIRD: {json.dumps(WEIRD)}}}\n"
        "  - {name: bad, dir: suites/bad}\n"
    )
    write_plan(workdir, plan)

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    assert result.code == 1, result.stderr
    items = items_of(result.json()["data"]["batch"])
    report, bad = items["report"], items["bad"]
    assert (report["outcome"], report["machine"]) == ("passed", "remote-1")
    assert (bad["outcome"], bad["run"]["exit_code"]) == ("failed", 7)
    log = Path(report["run"]["log_path"]).read_text()
    assert f"running report on remote-1 in {sshd.workdir}/{report['run_id']}/work" in log
    artifacts = Path(report["run"]["artifacts_path"])
    assert (artifacts / "weird.txt").read_text() == WEIRD
    assert (artifacts / "nested" / "file").read_text() == "deep\n"
    assert "failing" in Path(bad["run"]["log_path"]).read_text()
    assert not list(sshd.workdir.rglob("pwned*"))
    assert not list(workdir.rglob("pwned*"))
    assert list(sshd.workdir.iterdir()) == []  # remote run directories removed


def test_an_unreachable_machine_is_error_ssh_connect_and_retried(
    workdir: Path, state_dir: Path, sshd: Sshd
) -> None:
    dead_port = free_port()
    machine = sshd.machine("gone").replace(f"port: {sshd.port}", f"port: {dead_port}")
    env = fleet(workdir, machine)
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t, retries: 1}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    assert result.code == 1
    item = items_of(result.json()["data"]["batch"])["t"]
    assert (item["outcome"], item["attempt"], len(item["history"])) == ("error", 2, 1)
    assert item["run"]["error_code"] == "ssh_connect"
    assert "refused" in item["run"]["message"].lower()


def test_a_refused_key_is_error_ssh_auth(workdir: Path, state_dir: Path, sshd: Sshd) -> None:
    stranger = workdir / "stranger_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    machine = sshd.machine().replace(str(sshd.identity_file), str(stranger))
    env = fleet(workdir, machine)
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    item = items_of(result.json()["data"]["batch"])["t"]
    assert (item["outcome"], item["run"]["error_code"]) == ("error", "ssh_auth")
    assert "permission denied" in item["run"]["message"].lower()


def remote_pids(sshd: Sshd) -> list[int]:
    """Pids the remote test wrote down (its own and its child's)."""
    return [int(pid) for path in sshd.workdir.rglob("pids") for pid in path.read_text().split()]


STUBBORN = (
    "#!/bin/sh\n"
    "trap '' TERM\n"
    "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' &\n"
    'echo "$$ $!" > ../pids\n'
    "echo started\n"
    "while :; do sleep 0.1; done\n"
)


def test_timeout_kills_the_remote_process_tree(workdir: Path, state_dir: Path, sshd: Sshd) -> None:
    env = fleet(workdir, sshd.machine(extra="keep_remote: true"))
    make_suite(workdir / "suites", "stubborn", STUBBORN)
    write_plan(workdir, "version: 1\nentries:\n  - {name: s, dir: suites/stubborn, timeout: 2}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=90)

    assert result.code == 1
    item = items_of(result.json()["data"]["batch"])["s"]
    assert item["outcome"] == "timeout"
    pids = remote_pids(sshd)
    assert len(pids) == 2
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="remote tree gone")


def test_cancel_kills_the_remote_process_tree(workdir: Path, state_dir: Path, sshd: Sshd) -> None:
    env = fleet(workdir, sshd.machine(extra="keep_remote: true"))
    make_suite(workdir / "suites", "stubborn", STUBBORN)
    write_plan(workdir, "version: 1\nentries:\n  - {name: s, dir: suites/stubborn}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(lambda: len(remote_pids(sshd)) == 2, what="the remote test to start")
    pids = remote_pids(sshd)

    cancelled = run_batchctl("cancel", batch_id, "--json", cwd=workdir, env=env, timeout=90)

    assert cancelled.code == 0
    assert items_of(cancelled.json()["data"]["batch"])["s"]["outcome"] == "interrupted"
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="remote tree gone")


def test_killing_sshd_mid_run_gives_interrupted(workdir: Path, state_dir: Path, sshd: Sshd) -> None:
    env = fleet(workdir, sshd.machine(extra="keep_remote: true"))
    make_suite(workdir / "suites", "slow", blocking_script(workdir / "never", before="started"))
    write_plan(workdir, "version: 1\nentries:\n  - {name: slow, dir: suites/slow}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env).json()["data"][
        "batch"
    ]["id"]
    wait_until(
        lambda: any("started" in p.read_text() for p in (state_dir / "runs").rglob("output.log")),
        what="the remote test to start",
    )

    sshd.kill()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=90)

    assert final.code == 1
    item = items_of(final.json()["data"]["batch"])["slow"]
    assert item["outcome"] == "interrupted"
    assert item["run"]["error_code"] == "ssh_connection_lost"


def test_artifacts_linking_outside_are_refused(workdir: Path, state_dir: Path, sshd: Sshd) -> None:
    env = fleet(workdir, sshd.machine())
    script = (
        "#!/bin/sh\n"
        'ln -s /etc/passwd "$BATCHCTL_ARTIFACTS_DIR/passwd"\n'
        'ln -s ../../.. "$BATCHCTL_ARTIFACTS_DIR/up"\n'
        'echo fine > "$BATCHCTL_ARTIFACTS_DIR/fine.txt"\n'
    )
    make_suite(workdir / "suites", "evil", script)
    write_plan(workdir, "version: 1\nentries:\n  - {name: evil, dir: suites/evil}\n")

    result = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env)

    item = items_of(result.json()["data"]["batch"])["evil"]
    assert (item["outcome"], item["run"]["error_code"]) == ("error", "collect_failed")
    assert "refused" in item["run"]["message"]
    assert "link" in item["run"]["message"]
    artifacts = Path(item["run"]["artifacts_path"])
    assert list(artifacts.iterdir()) == []  # nothing extracted, inside or out
