"""Elastic machines with real workers and real sshd servers: a pool's
provision script starts an sshd on a new loopback port (with the test
sshd's keys) and prints its address; deprovision stops it by pid. Both
record their calls in a file."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchctl.model.pools import Address, PoolSpec
from batchctl.state.pools import PoolStore
from tests.e2e.test_governance import items_of, ledger_script, started
from tests.helpers import make_suite, run_batchctl, wait_until, write_plan
from tests.sshd import Sshd, free_port

PROVISION = '''\
"""Start an sshd on a free loopback port; print where it is as one JSON line.
Files in this directory steer it: capacity-errors (a count: exit 75 that
many times first), dead (a count: answer with a port nobody listens on)."""
import json, os, socket, subprocess, sys, time
here, keys, sshd = sys.argv[1], sys.argv[2], sys.argv[3]
name = os.environ["BATCHCTL_MACHINE"]

def take(flag):
    path = os.path.join(here, flag)
    if not os.path.exists(path):
        return False
    left = int(open(path).read() or 0)
    if left <= 0:
        return False
    open(path, "w").write(str(left - 1))
    return True

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

with open(os.path.join(here, "calls"), "a") as calls:
    if take("capacity-errors"):
        calls.write(f"provision {name} capacity\\n")
        print("no capacity in this zone", file=sys.stderr)
        sys.exit(75)
    if take("dead"):
        calls.write(f"provision {name} dead\\n")
        print(json.dumps({"host": "127.0.0.1", "port": free_port(), "id": "none"}))
        sys.exit(0)
    port = free_port()
    config = os.path.join(here, f"{name}.sshd_config")
    open(config, "w").write(
        f"Port {port}\\nListenAddress 127.0.0.1\\nHostKey {keys}/host_key\\n"
        f"AuthorizedKeysFile {keys}/authorized_keys\\nPidFile {here}/{name}.pid\\n"
        "StrictModes no\\nUsePAM no\\nPasswordAuthentication no\\n"
        "KbdInteractiveAuthentication no\\nMaxStartups 100\\nMaxSessions 100\\nLogLevel ERROR\\n"
    )
    log = open(os.path.join(here, f"{name}.sshd.log"), "wb")
    server = subprocess.Popen(
        [sshd, "-D", "-e", "-f", config], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    with open(os.path.join(here, "pids"), "a") as pids:
        pids.write(f"{server.pid}\\n")
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
    calls.write(f"provision {name} ok\\n")
    print(json.dumps({"host": "127.0.0.1", "port": port, "id": str(server.pid)}))
'''

DEPROVISION = """\
#!/bin/sh
echo "deprovision $BATCHCTL_MACHINE $BATCHCTL_MACHINE_ID" >> "{here}/calls"
if [ "$BATCHCTL_MACHINE_ID" != none ]; then kill "$BATCHCTL_MACHINE_ID" || true; fi
"""


@pytest.fixture
def pool_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the scripts keep their files; every sshd they started and did
    not stop is stopped at the end, by its pid."""
    here = tmp_path / "pool"
    here.mkdir()
    yield here
    pids = here / "pids"
    for line in pids.read_text().split() if pids.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line), signal.SIGKILL)


def calls(here: Path) -> list[list[str]]:
    path = here / "calls"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def pool_fleet(workdir: Path, here: Path, sshd: Sshd, **settings: Any) -> dict[str, str]:
    (here / "provision.py").write_text(PROVISION)
    (here / "deprovision.sh").write_text(DEPROVISION.format(here=here))
    keys = sshd.config.parent
    provision = f"{sys.executable} {here / 'provision.py'} {here} {keys} {sshd.binary}"
    options = {"max": 2, "idle_timeout": "2s", "ready_timeout": "30s", "retry_every": "1s"}
    options.update(settings)
    (workdir / "fleet.yaml").write_text(
        "pools:\n"
        "  - name: cloud\n"
        "    tags: [cloud]\n"
        "    slots: 1\n"
        + "".join(f"    {key}: {value}\n" for key, value in options.items())
        + f"    provision: {provision}\n"
        f"    deprovision: sh {here / 'deprovision.sh'}\n"
        f"    user: {sshd.user}\n"
        f"    identity_file: {sshd.identity_file}\n"
        f"    workdir: {sshd.workdir}\n"
    )
    return {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}


def pool_of(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_batchctl("machines", "--json", cwd=workdir, env=env)
    assert result.code == 0, result.stderr
    pool: dict[str, Any] = result.json()["data"]["pools"][0]
    return pool


@pytest.mark.slow
def test_a_pool_grows_to_its_max_for_two_batches_with_one_request_per_machine_and_shrinks_to_zero(
    workdir: Path, state_dir: Path, sshd: Sshd, pool_dir: Path
) -> None:
    ledger, gates = workdir / "ledger", workdir / "gates"
    gates.mkdir()
    env = pool_fleet(workdir, pool_dir, sshd)
    make_suite(workdir / "suites", "t", ledger_script(ledger, gates))
    for plan in ("a", "b"):
        write_plan(
            workdir,
            "version: 1\nentries:\n"
            + "".join(f"  - {{name: {plan}{n}, dir: suites/t, tag: cloud}}\n" for n in range(2)),
            name=f"{plan}.yaml",
        )
    assert pool_of(workdir, env)["machines"] == {}

    ids = [
        run_batchctl("run", plan, "--json", cwd=workdir, env=env).json()["data"]["batch"]["id"]
        for plan in ("a.yaml", "b.yaml")
    ]
    waiting = items_of(run_batchctl("status", ids[0], "--json", cwd=workdir, env=env))
    assert {item["reason_code"] for item in waiting.values() if item["state"] == "queued"} <= {
        "provisioning",
        "busy",
        "dispatching",
    }
    wait_until(lambda: len(started(ledger)) == 2, timeout=60, what="a run on each new machine")
    assert {machine for machine in started(ledger).values()} == {"cloud-1", "cloud-2"}
    assert pool_of(workdir, env)["machines"] == {"cloud-1": "ready", "cloud-2": "ready"}

    for plan in ("a", "b"):
        for n in range(2):
            (gates / f"{plan}{n}").touch()
    for batch_id in ids:
        final = run_batchctl(
            "status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120
        )
        assert final.code == 0, final.stderr
    wait_until(
        lambda: pool_of(workdir, env)["machines"] == {},
        timeout=60,
        what="the idle machines to be deprovisioned",
    )
    made = [call for call in calls(pool_dir) if call[0] == "provision"]
    assert sorted(call[1] for call in made) == ["cloud-1", "cloud-2"]  # never a third request
    gone = sorted(call[1] for call in calls(pool_dir) if call[0] == "deprovision")
    assert gone == ["cloud-1", "cloud-2"]
    logs = "".join(path.read_text() for path in (state_dir / "workers").glob("*.log"))
    for name in ("cloud-1", "cloud-2"):
        assert f"provisioning {name}" in logs
        assert f"{name} is ready" in logs
        assert f"{name} deprovisioned" in logs


def test_a_capacity_error_is_retried_and_a_machine_that_never_answers_is_deprovisioned(
    workdir: Path, state_dir: Path, sshd: Sshd, pool_dir: Path
) -> None:
    env = pool_fleet(workdir, pool_dir, sshd, max=1, ready_timeout="3s")
    (pool_dir / "capacity-errors").write_text("1")
    (pool_dir / "dead").write_text("1")
    make_suite(workdir / "suites", "t")
    write_plan(workdir, "version: 1\nentries:\n  - {name: t, dir: suites/t, tag: cloud}\n")

    final = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=120)

    assert final.code == 0, final.stderr
    assert items_of(final)["t"]["machine"] == "cloud-3"
    history = calls(pool_dir)
    assert history[:3] == [
        ["provision", "cloud-1", "capacity"],
        ["provision", "cloud-2", "dead"],
        ["deprovision", "cloud-2", "none"],
    ]
    assert history[3] == ["provision", "cloud-3", "ok"]
    pool = pool_of(workdir, env)
    assert pool["failed"] == 1
    assert pool["last_error"] == "cloud-2: never became healthy within 3s"


def test_a_worker_whose_fleet_file_turns_invalid_keeps_its_fleet_and_finishes_the_batch(
    workdir: Path, state_dir: Path
) -> None:
    ledger, gates = workdir / "ledger", workdir / "gates"
    gates.mkdir()
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        "machines:\n  - {name: here, transport: local, tags: [linux], slots: 1}\n"
        "pools:\n  - {name: cloud, tags: [cloud], idle_timeout: 1h, "
        "provision: 'exit 1', deprovision: 'true'}\n"
    )
    env = {"BATCHCTL_FLEET": str(fleet)}
    # A machine of the pool is ready before the batch: the worker's fleet has it.
    store = PoolStore(state_dir)
    spec = PoolSpec(name="cloud", tags=("cloud",), provision="exit 1", deprovision="true")
    now = datetime.now(UTC)
    [name] = store.request(spec, demand=1, by="test", now=now, hold_s=60)
    assert store.provisioned("cloud", name, Address(host="127.0.0.1", port=free_port()), now=now)
    assert store.ready("cloud", name, now=now)
    make_suite(workdir / "suites", "t", ledger_script(ledger, gates))
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: a, dir: suites/t, tag: linux}\n  - {name: b, dir: suites/t, tag: linux}\n",
    )
    result = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env)
    batch_id = result.json()["data"]["batch"]["id"]
    log = state_dir / "workers" / f"{batch_id}.log"
    wait_until(lambda: "a" in started(ledger), what="the first run")
    (gates / "a").touch()
    wait_until(lambda: "b" in started(ledger), what="the worker to dispatch the second run")

    # The file is edited into something invalid; then the pool's ready
    # machines change (another worker takes cloud-1 out): the worker reloads.
    fleet.write_text("machines:\n  - {name: here, slots: none}\n")
    later = datetime.now(UTC)
    assert store.deprovisioning("cloud", name, by="other", now=later, hold_s=600, note="idle")
    wait_until(lambda: "fleet not reloaded" in log.read_text(), what="the worker to say why")
    store.deprovisioned("cloud", name)
    (gates / "b").touch()

    wait_until(lambda: f"batch {batch_id} is done" in log.read_text(), what="the batch to end")
    text = log.read_text()
    [why] = [line for line in text.splitlines() if "fleet not reloaded" in line]
    assert f"{fleet}: machine 'here' (#1): field 'slots'" in why
    assert "Traceback" not in text
    assert [line[0] for line in (item.split() for item in ledger.read_text().splitlines())] == [
        "start",
        "end",
        "start",
        "end",
    ]


def test_a_worker_stopped_by_sigterm_deprovisions_the_idle_machines_nobody_else_would(
    workdir: Path, state_dir: Path, pool_dir: Path
) -> None:
    ledger, gates = workdir / "ledger", workdir / "gates"
    gates.mkdir()
    (pool_dir / "deprovision.sh").write_text(DEPROVISION.format(here=pool_dir))
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        "machines:\n  - {name: here, transport: local, tags: [linux], slots: 1}\n"
        "pools:\n  - {name: cloud, tags: [cloud], min: 1, max: 2, idle_timeout: 1h, "
        f"provision: 'exit 1', deprovision: 'sh {pool_dir / 'deprovision.sh'}'}}\n"
    )
    env = {"BATCHCTL_FLEET": str(fleet)}
    store = PoolStore(state_dir)
    spec = PoolSpec(name="cloud", tags=("cloud",), min=1, max=2, provision="x", deprovision="y")
    now = datetime.now(UTC)
    for name in store.request(spec, demand=2, by="test", now=now, hold_s=60):
        assert store.provisioned("cloud", name, Address(host="127.0.0.1", id="none"), now=now)
        assert store.ready("cloud", name, now=now)
    make_suite(workdir / "suites", "t", ledger_script(ledger, gates))
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/t, tag: linux}\n")
    result = run_batchctl("run", "plan.yaml", "--json", cwd=workdir, env=env)
    batch_id = result.json()["data"]["batch"]["id"]
    log = state_dir / "workers" / f"{batch_id}.log"
    wait_until(lambda: "a" in started(ledger), what="the run")
    wait_until(lambda: log.exists() and "holds batch" in log.read_text(), what="the worker")
    [pid] = [int(line.split()[1]) for line in log.read_text().splitlines() if "holds batch" in line]

    os.kill(pid, signal.SIGTERM)

    wait_until(lambda: "stopped by SIGTERM" in log.read_text(), what="the worker to stop")
    # Nobody else would tend the pool: the idle machine beyond min is gone.
    assert calls(pool_dir) == [["deprovision", "cloud-1", "none"]]
    assert {name: m.state for name, m in store.pools()["cloud"].machines.items()} == {
        "cloud-2": "ready"
    }
    assert "cloud-1 deprovisioned" in log.read_text()
    (gates / "a").touch()
