"""Running a test on a remote machine with the system OpenSSH client.

Upload the directory as a tar stream, run the entrypoint in
``<workdir>/<run-id>/work`` with output streamed back into the run's log,
collect ``artifacts/`` as a tar stream (extracted safely), remove the remote
directory. Timeout and cancel terminate the *remote* process tree.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

from batchctl.model.fleet import Machine
from batchctl.model.models import RunStatus
from batchctl.transports.archive import UnsafeArchive, safe_extract
from batchctl.transports.inputs import INPUTS_VARIABLE
from batchctl.transports.remote import RemoteLayout, commands_for, ssh_argv
from batchctl.transports.runners.base import Ended, from_exit_code, wait_for_exit

SSH_FAILED = 255  # what ssh exits with when ssh itself, not the command, failed
AUTH_MARKERS = (
    "permission denied",
    "too many authentication failures",
    "host key verification failed",
    "no such identity",
)
CONTROL_TIMEOUT_S = 60
SSH_EXIT_AFTER_KILL_S = 10


def classify_ssh_failure(stderr: str) -> str:
    """``ssh_auth`` when the server was reached but refused us, else ``ssh_connect``."""
    lowered = stderr.lower()
    return "ssh_auth" if any(marker in lowered for marker in AUTH_MARKERS) else "ssh_connect"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message from ssh"


class SshRunner:
    def __init__(
        self,
        *,
        machine: Machine,
        run_id: str,
        test_dir: Path,
        artifacts_dir: Path,
        entrypoint: str,
        env: dict[str, str],
        known_hosts: Path,
        kill_grace_s: float,
    ) -> None:
        self.machine = machine
        self.layout = RemoteLayout.for_run(machine, run_id)
        self.commands = commands_for(machine)
        self.test_dir = test_dir
        self.artifacts_dir = artifacts_dir
        self.entrypoint = entrypoint
        # Paths the controller gave are its own; the run sees the remote ones.
        given = env.get(INPUTS_VARIABLE)
        self.inputs_dir = Path(given) if given else None
        self.env = {**env, "BATCHCTL_ARTIFACTS_DIR": self.layout.artifacts}
        if given:
            self.env[INPUTS_VARIABLE] = self.layout.inputs
        self.known_hosts = known_hosts
        self.kill_grace_s = kill_grace_s
        self.process: subprocess.Popen[bytes] | None = None

    def _argv(self, remote_command: str) -> list[str]:
        return ssh_argv(self.machine, known_hosts=self.known_hosts, remote_command=remote_command)

    def _control(self, remote_command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self._argv(remote_command),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CONTROL_TIMEOUT_S + self.kill_grace_s,
            check=False,
        )

    def start(self, log: BinaryIO) -> Ended | None:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        upload = subprocess.Popen(
            self._argv(self.commands.upload(self.layout)),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert upload.stdin is not None
        assert upload.stderr is not None
        try:
            with tarfile.open(fileobj=upload.stdin, mode="w|") as archive:
                archive.add(self.test_dir, arcname="work")
                if self.inputs_dir is not None:
                    archive.add(self.inputs_dir, arcname="inputs")
                variables = self.commands.env_file(self.env)
                if variables is not None:
                    member = tarfile.TarInfo("env")
                    member.size = len(variables)
                    member.mode = 0o600
                    archive.addfile(member, io.BytesIO(variables))
            upload.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # ssh exited early; its status and message say why
        except OSError as exc:
            upload.kill()
            upload.wait()
            return Ended(
                RunStatus.ERROR,
                error_code="upload_failed",
                message=f"cannot read {self.test_dir}: {exc}",
            )
        stderr = upload.stderr.read().decode(errors="replace")
        code = upload.wait()
        if code == SSH_FAILED:
            return Ended(
                RunStatus.ERROR,
                error_code=classify_ssh_failure(stderr),
                message=f"{self.machine.name}: {_last_line(stderr)}",
            )
        if code != 0:
            return Ended(
                RunStatus.ERROR,
                error_code="upload_failed",
                message=f"{self.machine.name}: upload exited {code}: {_last_line(stderr)}",
            )
        self.process = subprocess.Popen(
            self._argv(self.commands.run(self.layout, self.entrypoint, self.env)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return None

    @property
    def pgid(self) -> int | None:
        return None

    def wait(self, timeout: float) -> bool:
        return wait_for_exit(self.process, timeout)

    def stop(self) -> None:
        """Kill the remote tree; the remote wrapper then exits and so does ssh."""
        kill_remote_run(
            self.machine, self.layout, known_hosts=self.known_hosts, grace_s=self.kill_grace_s
        )
        if self.process is not None:
            try:
                self.process.wait(timeout=SSH_EXIT_AFTER_KILL_S)
            except subprocess.TimeoutExpired:
                # The connection did not end with the remote tree (a process
                # that escaped its session keeps the channel open): drop it.
                self.process.kill()
                self.process.wait()

    def result(self) -> Ended:
        assert self.process is not None
        code = self.process.wait()
        if code != SSH_FAILED:
            return from_exit_code(code)
        # 255 is ssh's own failure -- or the test's exit code. The exit file
        # written by the remote wrapper tells them apart.
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            recorded = self._control(self.commands.read_exit(self.layout))
            text = recorded.stdout.decode(errors="replace").strip()
            if recorded.returncode == 0 and text.lstrip("-").isdigit():
                return from_exit_code(int(text))
        return Ended(
            RunStatus.INTERRUPTED,
            error_code="ssh_connection_lost",
            message=f"lost the connection to {self.machine.name} during the run",
        )

    def collect(self) -> Ended | None:
        collect = subprocess.Popen(
            self._argv(self.commands.collect(self.layout)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert collect.stdout is not None
        assert collect.stderr is not None
        try:
            safe_extract(
                collect.stdout,
                self.artifacts_dir,
                max_bytes=self.machine.max_artifacts_mb * 1024 * 1024,
            )
        except UnsafeArchive as exc:
            collect.kill()
            collect.wait()
            return Ended(
                RunStatus.ERROR,
                error_code="collect_failed",
                message=f"artifacts from {self.machine.name} refused: {exc}",
            )
        stderr = collect.stderr.read().decode(errors="replace")
        code = collect.wait()
        if code != 0:
            return Ended(
                RunStatus.ERROR,
                error_code="collect_failed",
                message=f"{self.machine.name}: cannot collect artifacts: {_last_line(stderr)}",
            )
        return None

    def cleanup(self) -> None:
        if not self.machine.keep_remote:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self._control(self.commands.cleanup(self.layout))


def kill_remote_run(
    machine: Machine, layout: RemoteLayout, *, known_hosts: Path, grace_s: float
) -> bool:
    """Terminate a run's remote process tree over a new connection (TERM,
    grace, KILL). Best effort: True if the machine answered."""
    argv = ssh_argv(
        machine, known_hosts=known_hosts, remote_command=commands_for(machine).kill(layout, grace_s)
    )
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CONTROL_TIMEOUT_S + grace_s,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return done.returncode == 0
