"""Local processes: liveness that survives pid reuse, and killing a process group."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from batchctl.model.clock import Clock
from batchctl.model.models import ProcessIdentity

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


_BOOT_ID: str | None = None
_PID_NS: str | None = None


def boot_id() -> str:
    """The kernel's id of this boot: pids and start times mean something only
    within one boot of one machine."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            _BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _BOOT_ID = "unknown-boot"
    return _BOOT_ID


def pid_namespace() -> str:
    """This process's pid namespace: the same pid names another process in
    another namespace (a container)."""
    global _PID_NS
    if _PID_NS is None:
        try:
            _PID_NS = str(Path("/proc/self/ns/pid").readlink())
        except OSError:
            _PID_NS = "unknown-ns"
    return _PID_NS


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of live process ``pid`` in our namespace, or None."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return ProcessIdentity(
        boot_id=boot_id(), pid_ns=pid_namespace(), pid=pid, start_ticks=int(fields[19])
    )


def this_process() -> ProcessIdentity:
    identity = identity_of(os.getpid())
    if identity is None:  # no /proc: the pid alone, in a namespace of its own name
        return ProcessIdentity(
            boot_id=boot_id(), pid_ns=pid_namespace(), pid=os.getpid(), start_ticks=0
        )
    return identity


def identity_alive(identity: ProcessIdentity) -> bool | None:
    """Is that very process alive? None when this process cannot tell: it
    runs in another boot, host or pid namespace."""
    if identity.boot_id != boot_id() or identity.pid_ns != pid_namespace():
        return None
    return pid_alive(identity.pid, float(identity.start_ticks) if identity.start_ticks else None)


def signal_process(identity: ProcessIdentity, sig: int) -> bool:
    """Send ``sig`` to exactly that process: through a pidfd, taken before
    the identity is checked, so the pid cannot be recycled in between.
    False if it is gone (or not ours to see)."""
    if identity_alive(identity) is not True:
        return False
    try:
        pidfd = os.pidfd_open(identity.pid)
    except OSError:
        return False
    try:
        if identity_alive(identity) is not True:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def sleep_unless_it_ends(identity: ProcessIdentity | None, seconds: float) -> None:
    """Sleep ``seconds``, or less: until that process ends, when it is one
    this host can watch (its pidfd turns readable as it exits)."""
    pidfd = None
    if identity is not None and identity_alive(identity) is True:
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(identity.pid)
    if pidfd is None:
        time.sleep(seconds)
        return
    try:
        select.select([pidfd], [], [], seconds)
    finally:
        os.close(pidfd)


class BeatWatch:
    """Judges a process this host cannot see by a counter it keeps moving:
    dead once the counter stood still for ``stale_s`` on our monotonic clock
    (two hosts' wall clocks are never compared)."""

    def __init__(self, monotonic: Callable[[], float], *, stale_s: float) -> None:
        self.monotonic = monotonic
        self.stale_s = stale_s
        self._seen: dict[str, tuple[str | None, float]] = {}

    def advancing(self, key: str, counter: str | None) -> bool:
        now = self.monotonic()
        seen = self._seen.get(key)
        if seen is None or seen[0] != counter:
            self._seen[key] = (counter, now)
            return True
        return now - seen[1] < self.stale_s


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
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False  # the common case, answered without reading /proc
    except PermissionError:
        return True
    # Members exist, but zombies count for killpg: look at each.
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                return True
        return False
    return True


def group_of_run(pgid: int, run_id: str) -> bool:
    """Does process group ``pgid`` still hold a process of run ``run_id``?
    A group whose leader is gone may have been emptied and its number given
    to someone else; its members are recognised by the run id they inherited
    in their environment. Costs a look at /proc only when the group exists."""
    if not group_alive(pgid):
        return False
    marker = f"BATCHCTL_RUN_ID={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if not fields or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False


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
