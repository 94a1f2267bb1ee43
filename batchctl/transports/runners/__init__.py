"""How an executor runs one run on its machine: locally, or over ssh."""

from __future__ import annotations

import os
from pathlib import Path

from batchctl.model.clock import Clock
from batchctl.model.fleet import Machine
from batchctl.model.models import Entry, Run
from batchctl.transports.runners.base import Runner
from batchctl.transports.runners.local import LocalRunner
from batchctl.transports.runners.ssh import SshRunner


def make_runner(
    run: Run,
    entry: Entry,
    machine: Machine,
    env: dict[str, str],
    *,
    state_dir: Path,
    clock: Clock,
    kill_grace_s: float,
) -> Runner:
    if machine.transport == "ssh":
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
    return LocalRunner(
        test_dir=Path(entry.abs_dir),
        run_dir=Path(run.log_path).parent,
        entrypoint=machine.entrypoint,
        env={**os.environ, **env},
        clock=clock,
        kill_grace_s=kill_grace_s,
    )
