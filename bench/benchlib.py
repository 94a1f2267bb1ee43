"""What the benchmark scripts share."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class BenchFailed(Exception):
    """A measured command failed: the figures would mean nothing."""


def environment_without_tuning() -> dict[str, str]:
    """The caller's environment without any BATCHCTL_* variable: the bench
    never tunes the engine by accident."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def timed_run(argv: Sequence[str], env: dict[str, str], out: Path, timeout_s: float) -> float:
    """Wall seconds of one whole command; its stdout goes to OUT and its
    stderr beside it (``OUT.stderr``), not to a pipe. A non-zero exit or a
    timeout raises BenchFailed with the end of its stderr."""
    err = out.with_name(out.name + ".stderr")
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        # A plain wait, with the time limit kept by a timer: Popen.wait with a
        # timeout polls every 50 ms, which would add up to 50 ms to each figure.
        watchdog = threading.Timer(timeout_s, _kill_group, (process.pid,))
        watchdog.start()
        try:
            code = process.wait()
        finally:
            watchdog.cancel()
        elapsed = time.perf_counter() - start
        if elapsed >= timeout_s:
            raise BenchFailed(f"timed out after {timeout_s:g} s: {shlex.join(argv)}")
    if code != 0:
        tail = err.read_text(errors="replace")[-2000:]
        raise BenchFailed(f"exit {code}: {shlex.join(argv)}\n{tail}")
    return elapsed


def compile_bytecode() -> None:
    """Measure batchctl as installed: a package installed from a wheel has
    its bytecode compiled, an editable checkout only once Python may write
    it (not under PYTHONDONTWRITEBYTECODE), else every command compiles its
    modules again (about 60 ms each time)."""
    import compileall

    package = Path(__file__).resolve().parent.parent / "batchctl"
    if package.is_dir() and not compileall.compile_dir(package, quiet=1):
        raise BenchFailed(f"cannot compile {package}")


def find_batchctl(option: str | None) -> Path:
    """The batchctl to measure: the one given, else the one beside this
    Python (the project's venv), else the one on PATH."""
    if option:
        return Path(option).absolute()
    beside = Path(sys.executable).parent / "batchctl"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("batchctl")
    if found is None:
        sys.exit("batchctl not found: pass --batchctl PATH")
    return Path(found).absolute()
