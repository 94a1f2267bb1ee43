"""A real OpenSSH server on 127.0.0.1, started and stopped (by pid) by the
test that uses it, with throwaway host and user keys."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def find_sshd() -> str | None:
    found = next((path for path in SSHD_CANDIDATES if Path(path).is_file()), None)
    return found or shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def start_sshd(binary: str, config: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start sshd with ``config`` and wait until it accepts connections on ``port``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"sshd did not start: {log_path.read_text()}")
        time.sleep(0.05)


@dataclass
class Sshd:
    port: int
    process: subprocess.Popen[bytes]
    user: str
    identity_file: Path
    workdir: Path
    binary: str
    config: Path
    log_path: Path

    def machine(
        self, name: str = "remote-1", *, tags: str = "[local]", slots: int = 2, extra: str = ""
    ) -> str:
        """One fleet-file entry for a machine reached through this server."""
        return (
            f"  - {{name: {name}, transport: ssh, host: 127.0.0.1, port: {self.port}, "
            f"user: {self.user}, identity_file: {self.identity_file}, workdir: {self.workdir}, "
            f"tags: {tags}, slots: {slots}{', ' + extra if extra else ''}}}\n"
        )

    def kill(self) -> None:
        """Kill the server and every connection it serves: connections die mid-run."""
        for pid in [*children_of(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start the server again on its port, with its keys (after ``kill``)."""
        self.process = start_sshd(self.binary, self.config, self.port, self.log_path)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    binary = find_sshd()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("sshd is not installed; .ci/run installs openssh-server")
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    base = tmp_path / "sshd"
    base.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True
        )
    authorized = base / "authorized_keys"
    authorized.write_text((base / "user_key.pub").read_text())
    authorized.chmod(0o600)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {base / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
    )
    log_path = base / "sshd.log"
    process = start_sshd(binary, config, port, log_path)
    workdir = tmp_path / "remote"
    workdir.mkdir()
    server = Sshd(
        port, process, getpass.getuser(), base / "user_key", workdir, binary, config, log_path
    )
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()
