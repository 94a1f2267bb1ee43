"""How an executor runs one run on its machine. Executors serve ssh machines;
local runs are supervised by the worker itself (transports/local.py)."""

from __future__ import annotations

from pathlib import Path

from batchctl.model.fleet import Machine
from batchctl.model.models import Entry, Run
from batchctl.transports.runners.base import Runner
from batchctl.transports.runners.ssh import SshRunner


def make_runner(
    run: Run,
    entry: Entry,
    machine: Machine,
    env: dict[str, str],
    *,
    state_dir: Path,
    kill_grace_s: float,
) -> Runner:
    if machine.transport != "ssh":
        raise LookupError(f"machine {machine.name!r} is not an ssh machine")
    return SshRunner(
        machine=machine,
        run_id=run.id,
        test_dir=Path(entry.abs_dir),
        artifacts_dir=Path(run.artifacts_path),
        entrypoint=machine.entrypoint,
        env=env,
        known_hosts=state_dir / "ssh" / "known_hosts",
        kill_grace_s=kill_grace_s,
    )
