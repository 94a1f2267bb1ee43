"""Local processes: liveness that survives pid reuse, and killing a process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from batchctl.model.clock import Clock

POLL_S = 0.05
KILL_SETTLE_S = 5.0


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after
    # the last ')' are fixed.
    return raw[raw.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), else None."""
    fields = _proc_stat(pid)
    return float(fields[19]) if fields else None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Is ``pid`` a live (non-zombie) process — and the same one that had
    start time ``started``, so a recycled pid is not taken for it?"""
    fields = _proc_stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):
            return False
        return started is None or float(fields[19]) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None


def group_alive(pgid: int) -> bool:
    """Does any non-zombie process remain in process group ``pgid``?"""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment has ``name=value`` (Linux)."""
    marker = f"{name}={value}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_group(
    pgid: int, *, grace_s: float, clock: Clock, reap: subprocess.Popen[bytes] | None = None
) -> None:
    """TERM the whole group, give it ``grace_s`` to go, then KILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_SETTLE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = clock.monotonic() + wait_s
        while clock.monotonic() < deadline:
            if reap is not None:
                reap.poll()  # our own child would otherwise linger as a zombie
            if not group_alive(pgid):
                return
            time.sleep(POLL_S)


def spawn_detached(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session with no stdin, appending its output to
    ``log_path``; it outlives the caller."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log:
        log_path.chmod(0o600)
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return process.pid
