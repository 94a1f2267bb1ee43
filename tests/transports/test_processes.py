"""Process helpers against real processes."""

from __future__ import annotations

import os
import subprocess

from batchctl.model.clock import SystemClock
from batchctl.transports.processes import (
    group_alive,
    kill_group,
    pid_alive,
    process_start_time,
    processes_with_env,
)
from tests.helpers import wait_until


def test_a_run_is_found_by_its_id_and_its_group_killed_even_if_it_ignores_term() -> None:
    process = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' & wait"],
        env={**os.environ, "BATCHCTL_RUN_ID": "run-under-test"},
        start_new_session=True,
    )
    try:
        # Until the child has exec'd, /proc shows the environment it forked with.
        wait_until(
            lambda: process.pid in processes_with_env("BATCHCTL_RUN_ID", "run-under-test"),
            what="the test process to show its environment",
        )
        assert processes_with_env("BATCHCTL_RUN_ID", "some-other-run") == []

        kill_group(os.getpgid(process.pid), grace_s=0.3, clock=SystemClock(), reap=process)

        assert not group_alive(process.pid)
        assert processes_with_env("BATCHCTL_RUN_ID", "run-under-test") == []
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_recycled_pid_is_not_taken_for_the_process_it_replaced() -> None:
    process = subprocess.Popen(["sleep", "30"])
    try:
        started = process_start_time(process.pid)
        assert started is not None
        assert pid_alive(process.pid, started)
        assert not pid_alive(process.pid, started + 1)  # same pid, another process
    finally:
        process.kill()
        process.wait()
    assert not pid_alive(process.pid, started)
