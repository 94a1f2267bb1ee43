"""Shared test helpers: plans on disk, and the CLI called in-process or as a process."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchctl.cli.app import main

PASSING_SCRIPT = "#!/bin/sh\necho ok\n"


def blocking_script(release: Path, before: str = "", after: str = "") -> str:
    """A run.sh that prints ``before``, waits until ``release`` exists, then
    prints ``after`` — so a test decides when a run ends, without sleeping."""
    return (
        "#!/bin/sh\n"
        f"echo '{before}'\n"
        f"while [ ! -e '{release}' ]; do sleep 0.05; done\n"
        f"echo '{after}'\n"
    )


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        return json.loads(self.stderr)


class CliRunner:
    """Runs batchctl's real entry point in this process and captures its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> CliResult:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)


def run_batchctl(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> CliResult:
    """Runs batchctl as a real process (what CI and users do)."""
    completed = subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def make_suite(root: Path, name: str, script: str = PASSING_SCRIPT) -> Path:
    suite = root / name
    suite.mkdir(parents=True, exist_ok=True)
    entrypoint = suite / "run.sh"
    entrypoint.write_text(script)
    entrypoint.chmod(0o755)
    return suite


def write_plan(root: Path, text: str, name: str = "plan.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def snapshot_dir(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` with its bytes, to prove nothing changed."""
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def processes_of(root: Path) -> list[int]:
    """Pids of live processes working for a test whose files are all under
    ``root``: workers and executors name it on their command line, local runs
    inherit it in $BATCHCTL_STATE_DIR, and every run (local or "remote") has
    its working directory below it. Found by pid, never by process name."""
    prefix = str(root)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2] in "ZX":
                continue
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue
        if (
            cwd.startswith(prefix)
            or any(arg.startswith(prefix) for arg in cmdline)
            or any(var.startswith(f"BATCHCTL_STATE_DIR={prefix}") for var in environ)
        ):
            found.append(int(entry.name))
    return found


def stop_processes_of(state_dir: Path) -> None:
    """Kill, by pid, whatever a test left running under its directory, then
    reap our own exited children."""
    import signal
    import time

    deadline = time.monotonic() + 10
    # Again until none is left: a process forked just as the last round ran
    # (a wrapper starting its test) is caught by the next one.
    while (left := processes_of(state_dir)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    survivors = {
        pid: (
            Path(f"/proc/{pid}/stat").read_text()[:120],
            Path(f"/proc/{pid}/cmdline").read_bytes(),
        )
        for pid in processes_of(state_dir)
    }
    assert not survivors, f"processes of the test survived SIGKILL: {survivors}"


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def lock_held_elsewhere(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` from another process (a real competing batchctl
    would) until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from filelock import FileLock\n"
            f"lock = FileLock({str(lock_path)!r}); lock.acquire()\n"
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate(input="", timeout=10)


def stored_runs(state_dir: Path) -> dict[str, Any]:
    """Every run as runs.json (snapshot and journal) holds it, read fresh."""
    from batchctl.state.runs import RunStore

    store = RunStore(state_dir)
    # The ids first: each `get` folds what was appended since, into the very
    # dict `read` returned, while a worker may be appending.
    run_ids = list(store.file.read()["runs"])
    return {run_id: store.get(run_id).model_dump(mode="json") for run_id in run_ids}


def stored_batches(state_dir: Path) -> dict[str, Any]:
    """Every batch as batches.json (snapshot and journal) holds it, read fresh."""
    from batchctl.state.batches import BatchStore

    batches: dict[str, Any] = BatchStore(state_dir).file.read()["batches"]
    return batches


def run_pgid(state_dir: Path, run_id: str) -> int | None:
    """The test's process group, as the run's supervisor recorded it."""
    from batchctl.transports.rundir import read_pgid

    return read_pgid(state_dir / "runs" / run_id)


@contextlib.contextmanager
def batchctl_process(*args: str, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """batchctl as a real process whose output the test reads as it comes;
    stopped (by its pid) if the test leaves before it ended."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchctl", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float = 30) -> bytes:
    """What the process printed on stdout up to and including ``marker``
    (and whatever came in the same read)."""
    assert process.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while marker not in seen:
            assert selector.select(timeout=timeout), f"no {marker!r} within {timeout}s: {seen!r}"
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"output ended before {marker!r}: {seen!r}"
            seen += chunk
    return seen


def run_shared_batch(root: Path, *, extra_env: dict[str, str] | None = None) -> CliResult:
    """`run plan.yaml --wait --json` in ``root`` (its plan and suites already
    written) on a local fleet of 2 slots, with state in ``root/state``: the
    batch a module-scoped fixture shares among its tests. The environment is
    set in full, since the autouse fixture that isolates each test is not in
    force for a fixture shared by the module; short ticks and retry backoffs
    keep it quick. Its processes are the caller's to stop (stop_processes_of)."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    fleet = write_plan(
        root,
        "machines:\n  - {name: local, transport: local, tags: [local], slots: 2}\n",
        "fleet.yaml",
    )
    env = {
        "HOME": str(home),
        "BATCHCTL_STATE_DIR": str(root / "state"),
        "BATCHCTL_FLEET": str(fleet),
        "BATCHCTL_TAG": "local",
        "BATCHCTL_STAGING": "",
        "BATCHCTL_TICK": "0.1",
        "BATCHCTL_RETRY_BASE": "0.1",
        "BATCHCTL_RETRY_CAP": "0.5",
        "BATCHCTL_LOCK_TIMEOUT": "10",
        **(extra_env or {}),
    }
    return run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=root, env=env, timeout=120)


def start_held_batch(workdir: Path, *, with_dependent: bool = True) -> tuple[str, Path]:
    """Start (no --wait) a batch of `quick`, which passes, and `slow`, which
    runs until the returned release file exists; with ``with_dependent``,
    `after` needs `slow`. Returns (batch id, release file): the caller
    decides when the batch can finish."""
    release = workdir / "release"
    make_suite(workdir / "suites", "slow", blocking_script(release, before="started"))
    make_suite(workdir / "suites", "quick")
    after = "  - {name: after, dir: suites/quick, needs: [slow]}\n" if with_dependent else ""
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: quick, dir: suites/quick}\n"
        "  - {name: slow, dir: suites/slow}\n" + after,
    )
    started = run_batchctl("run", "plan.yaml", "--json", cwd=workdir)
    assert started.code == 0, started.stderr
    return started.json()["data"]["batch"]["id"], release
