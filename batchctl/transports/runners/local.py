"""Running a test on this host: a fresh copy of the directory, its own
process group, output straight into the log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import BinaryIO

from batchctl.model.clock import Clock
from batchctl.model.models import RunStatus
from batchctl.transports.processes import group_alive, kill_group
from batchctl.transports.runners.base import Ended, from_exit_code, wait_for_exit
from batchctl.transports.testdir import copy_test_dir


class LocalRunner:
    def __init__(
        self,
        *,
        test_dir: Path,
        run_dir: Path,
        entrypoint: str,
        env: dict[str, str],
        clock: Clock,
        kill_grace_s: float,
    ) -> None:
        self.test_dir = test_dir
        self.work = run_dir / "work"
        self.entrypoint = entrypoint
        self.env = env
        self.clock = clock
        self.kill_grace_s = kill_grace_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, log: BinaryIO) -> Ended | None:
        try:
            copy_test_dir(self.test_dir, self.work)
        except OSError as exc:
            return Ended(
                RunStatus.ERROR,
                error_code="upload_failed",
                message=f"cannot copy {self.test_dir}: {exc}",
            )
        script = self.work / self.entrypoint
        if not script.is_file():
            return Ended(
                RunStatus.ERROR,
                error_code="entrypoint_missing",
                message=f"{self.entrypoint} not found in {self.test_dir}",
            )
        argv = [str(script)] if os.access(script, os.X_OK) else ["/bin/sh", str(script)]
        try:
            self.process = subprocess.Popen(
                argv,
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return Ended(
                RunStatus.ERROR,
                error_code="start_failed",
                message=f"cannot start {self.entrypoint}: {exc}",
            )
        return None

    @property
    def pgid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait(self, timeout: float) -> bool:
        return wait_for_exit(self.process, timeout)

    def stop(self) -> None:
        if self.process is not None:
            kill_group(
                self.process.pid, grace_s=self.kill_grace_s, clock=self.clock, reap=self.process
            )
            self.process.wait()

    def result(self) -> Ended:
        assert self.process is not None
        code = self.process.wait()
        # Whatever the entrypoint left behind in its group goes with it.
        if group_alive(self.process.pid):
            self.stop()
        return from_exit_code(code)

    def collect(self) -> Ended | None:
        return None  # the test wrote straight into the run's artifacts directory

    def cleanup(self) -> None:
        return None  # the copy stays in the run directory for inspection
