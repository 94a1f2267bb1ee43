"""The live table on a terminal: it fits the screen with what matters first,
and estimates the time left from earlier batches of the same plan."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from batchctl.cli.live import live_table, remaining_s
from batchctl.model.views import BatchView
from tests.helpers import make_suite, run_batchctl, write_plan

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def item(name: str, outcome: str, started: datetime | None = None) -> dict[str, Any]:
    run = None
    if started is not None:
        run = {
            "id": f"run-{name}",
            "status": "running",
            "exit_code": None,
            "error_code": None,
            "message": None,
            "started_at": started.isoformat(),
            "ended_at": None,
            "log_path": "/x/output.log",
            "artifacts_path": "/x/artifacts",
        }
    return {
        "name": name,
        "selector": "tag:local",
        "needs": [],
        "state": "dispatched" if run else "queued",
        "outcome": outcome,
        "attempt": 1,
        "run_id": run["id"] if run else None,
        "machine": "box" if run else None,
        "error_code": None,
        "reason": None,
        "blame": None,
        "history": [],
        "run": run,
    }


def view(items: list[dict[str, Any]], *, done: bool = False) -> BatchView:
    counts: dict[str, int] = {}
    for entry in items:
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    return BatchView.model_validate(
        {
            "id": "20261123-115000-abcdef",
            "plan_hash": "0" * 64,
            "staging": "",
            "source": "plan:plan.yaml",
            "created_by": "ci@box",
            "created_at": (NOW - timedelta(seconds=95)).isoformat(),
            "expected_count": len(items),
            "done": done,
            "cancelled": False,
            "queue_timeout_s": 86400,
            "counts": counts,
            "items": items,
        }
    )


def rendered(table: Any, height: int) -> list[str]:
    console = Console(width=120, height=height, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().rstrip("\n").splitlines()


def test_a_large_batch_fits_the_screen_running_and_failed_first() -> None:
    items = [item(f"t{n:04d}", "passed") for n in range(1, 1001)]
    items[500] = item("t0501", "running", started=NOW - timedelta(seconds=3))
    items[900] = item("t0901", "failed")
    items[999] = item("t1000", "running", started=NOW - timedelta(seconds=1))

    lines = rendered(live_table(view(items), height=20, now=NOW, expected={}), height=20)

    assert len(lines) <= 20
    names = [line.split()[0] for line in lines[2:-1]]  # after the title and the header
    assert names[:3] == ["t0501", "t1000", "t0901"]  # running, then failed
    assert lines[-1].split()[:3] == ["…", f"{1000 - len(names)}", "more"]
    assert f"{1000 - len(names)} passed" in lines[-1]
    assert "1m35s elapsed" in lines[0]
    assert "left" not in lines[0]  # no earlier batch: no estimate


def test_a_small_batch_is_shown_whole() -> None:
    items = [item("a", "passed"), item("b", "queued")]
    lines = rendered(live_table(view(items), height=40, now=NOW, expected={}), height=40)
    assert [line.split()[0] for line in lines[2:]] == ["b", "a"]  # queued first
    assert "more" not in lines[-1]


def test_time_left_comes_from_earlier_durations_over_the_runs_in_flight() -> None:
    items = [
        item("a", "running", started=NOW - timedelta(seconds=10)),
        item("b", "running", started=NOW - timedelta(seconds=50)),
        item("c", "queued"),
        item("d", "queued"),
        item("e", "passed"),
    ]
    expected = {"a": 30.0, "b": 40.0, "c": 50.0}  # d unknown: the median, 40 s
    # Work left (20 + 0 + 50 + 40) over the 2 runs in flight, longer than any one item.
    assert remaining_s(view(items), NOW, expected) == 55.0
    assert remaining_s(view(items), NOW, {}) is None
    title = rendered(live_table(view(items), height=30, now=NOW, expected=expected), 30)[0]
    assert "about 55s left" in title


def test_time_left_is_at_least_the_longest_chain_left() -> None:
    items = [
        item("a", "running", started=NOW - timedelta(seconds=10)),
        {**item("b", "waiting"), "needs": ["a"]},
        {**item("c", "waiting"), "needs": ["b"]},
        item("d", "running", started=NOW),
    ]
    expected = {"a": 30.0, "b": 40.0, "c": 50.0, "d": 5.0}
    # a's 20 s left, then b and c one after the other, however many run at once.
    assert remaining_s(view(items), NOW, expected) == 110.0


def _read_all(fd: int, process: subprocess.Popen[bytes], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    return out


def test_on_a_terminal_a_second_batch_of_a_plan_shows_the_time_left(
    workdir: Path, state_dir: Path
) -> None:
    gate = workdir / "gate"
    script = f"#!/bin/sh\nwhile [ ! -e '{gate}' ]; do sleep 0.05; done\n"
    for name in ("a", "b", "c"):
        make_suite(workdir / "suites", name, script)
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        "  - {name: a, dir: suites/a}\n  - {name: b, dir: suites/b}\n"
        "  - {name: c, dir: suites/c}\n",
    )
    gate.touch()
    first = run_batchctl("run", "plan.yaml", "--staging", "one", "--wait", cwd=workdir)
    assert first.code == 0, first.stderr
    gate.unlink()

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "run", "plan.yaml", "--staging", "two", "--wait"],
        cwd=workdir,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "12"},
    )
    os.close(follower)
    try:
        shown = b""
        deadline = time.monotonic() + 30
        while b"left" not in shown and time.monotonic() < deadline:
            shown += _read_all(leader, process, 0.5)
        assert b"elapsed" in shown
        assert b"left" in shown, shown.decode(errors="replace")[-2000:]
        gate.touch()
        _read_all(leader, process, 30)
        assert process.wait(timeout=30) == 0
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
