"""Every test gets its own state directory and a HOME it must not escape."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import freezegun
import pytest

from tests.helpers import CliRunner, stop_processes_of

# filelock measures its timeout with the real clock; under a frozen clock a
# lock wait would never end.
freezegun.configure(extend_ignore_list=["filelock"])

# The `sshd` fixture: a real OpenSSH server on loopback; `slurm_cluster`: a
# real Slurm cluster on this host, for the session.
pytest_plugins = ["tests.sshd", "tests.slurm"]


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state_dir = tmp_path / "state"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BATCHCTL_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BATCHCTL_LOCK_TIMEOUT", "10")
    # Fast timings so real workers and executors finish tests quickly.
    monkeypatch.setenv("BATCHCTL_TICK", "0.1")
    monkeypatch.setenv("BATCHCTL_KILL_GRACE", "2")
    monkeypatch.setenv("BATCHCTL_LEASE_STALE", "5")
    monkeypatch.setenv("BATCHCTL_HEARTBEAT", "1")
    monkeypatch.setenv("BATCHCTL_RETRY_BASE", "0.1")
    monkeypatch.setenv("BATCHCTL_RETRY_CAP", "0.5")
    for variable in ("XDG_STATE_HOME", "BATCHCTL_TAG", "BATCHCTL_STAGING", "BATCHCTL_FLEET"):
        monkeypatch.delenv(variable, raising=False)
    yield state_dir
    stop_processes_of(tmp_path)
    # Tests run as root in CI, where permissions would not stop a stray write:
    # check instead that nothing landed in HOME.
    leaked = sorted(str(path.relative_to(home)) for path in home.rglob("*"))
    assert not leaked, f"the test wrote into HOME: {leaked}"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    return CliRunner(capsys)


@pytest.fixture
def state_dir(isolated_state: Path) -> Path:
    return isolated_state


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory for plans and their test directories."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("COLUMNS", "200")
