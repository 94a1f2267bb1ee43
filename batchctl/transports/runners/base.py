"""The runner interface the executor drives, one implementation per transport."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from batchctl.model.models import Run, RunStatus


@dataclass(frozen=True)
class Ended:
    """How a run ended, as the runs store records it."""

    status: RunStatus
    exit_code: int | None = None
    error_code: str | None = None
    message: str | None = None


def ending(
    ended: Ended, now: datetime, *, started_at: datetime | None = None
) -> Callable[[Run], Run | None]:
    """The change that ends a run as ``ended`` says, for ``RunStore.update``;
    nothing for a run already over."""

    def change(run: Run) -> Run | None:
        if run.status.terminal:
            return None
        return run.model_copy(
            update={
                "status": ended.status,
                "exit_code": ended.exit_code,
                "error_code": ended.error_code,
                "message": ended.message,
                "ended_at": now,
                "started_at": run.started_at or started_at or now,
            }
        )

    return change


def batchctl_variables(run: Run, staging: str) -> dict[str, str]:
    """batchctl's own variables for a run (SPEC §2), on every transport."""
    return {
        "BATCHCTL_BATCH_ID": run.batch_id,
        "BATCHCTL_ITEM": run.item,
        "BATCHCTL_RUN_ID": run.id,
        "BATCHCTL_ATTEMPT": str(run.attempt),
        "BATCHCTL_STAGING": staging,
        "BATCHCTL_MACHINE": run.machine,
        "BATCHCTL_ARTIFACTS_DIR": run.artifacts_path,
    }


def from_exit_code(code: int) -> Ended:
    if code == 0:
        return Ended(RunStatus.SUCCEEDED, exit_code=0)
    if code < 0:
        return Ended(RunStatus.FAILED, exit_code=128 - code, message=f"killed by signal {-code}")
    return Ended(RunStatus.FAILED, exit_code=code)


class Runner(Protocol):
    def start(self, log: BinaryIO) -> Ended | None:
        """Put the test in place and launch the entrypoint, its output going to
        ``log``. An Ended means it failed before the test could run."""
        ...

    @property
    def pgid(self) -> int | None:
        """The local process group to record (None for remote runs)."""
        ...

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the entrypoint has exited."""
        ...

    def stop(self) -> None:
        """Terminate the run's whole process tree: TERM, grace, KILL."""
        ...

    def result(self) -> Ended:
        """After the entrypoint exited: the outcome its exit status means."""
        ...

    def collect(self) -> Ended | None:
        """Bring the artifacts back; an Ended (error) if that failed."""
        ...

    def cleanup(self) -> None:
        """Remove what the run left on the machine."""
        ...


def wait_for_exit(process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``process``; True once it has exited."""
    assert process is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    return process.poll() is not None
