"""Stopping a run acts on fresh facts: what the runs store says now, and the
supervisor's identity checked against the live process (SPEC §4, §6)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchctl.model.clock import SystemClock
from batchctl.model.models import ProcessIdentity, Run, RunStatus
from batchctl.state.runs import PrepareRequest, RunStore
from batchctl.transports.detached import DetachedTransport
from batchctl.transports.processes import identity_of, pid_alive
from batchctl.transports.rundir import write_result
from batchctl.transports.runners.base import Ended


@pytest.fixture
def runs(state_dir: Path) -> RunStore:
    return RunStore(state_dir)


@pytest.fixture
def transport(runs: RunStore) -> DetachedTransport:
    return DetachedTransport(runs, SystemClock(), kill_grace_s=1)


@pytest.fixture
def supervisor() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a run's supervisor."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def prepared(runs: RunStore) -> Run:
    [result] = runs.prepare_many(
        [PrepareRequest("b1", "a", 1, ("m1",), "/x", "h")],
        slots={"m1": 1},
        now=SystemClock().now(),
    )
    assert result.run is not None
    return result.run


def claim(runs: RunStore, run: Run, identity: ProcessIdentity) -> Run:
    return runs.update(
        run.id,
        lambda current: current.model_copy(
            update={"status": RunStatus.RUNNING, "supervisor": identity}
        ),
    )


def test_a_stale_read_never_ends_a_run_that_was_claimed_since(
    runs: RunStore, transport: DetachedTransport, supervisor: subprocess.Popen[bytes]
) -> None:
    stale = prepared(runs)  # read while still unclaimed
    identity = identity_of(supervisor.pid)
    assert identity is not None
    claim(runs, stale, identity)

    after = transport.terminate(stale)

    assert after.status is RunStatus.RUNNING  # its supervisor records the end, not us
    assert supervisor.wait(timeout=10) == -15  # asked to stop, by its exact identity


def test_a_supervisor_this_host_cannot_see_is_never_signalled(
    runs: RunStore, transport: DetachedTransport, supervisor: subprocess.Popen[bytes]
) -> None:
    identity = identity_of(supervisor.pid)
    assert identity is not None
    elsewhere = identity.model_copy(update={"boot_id": "another-host-or-boot"})
    run = claim(runs, prepared(runs), elsewhere)

    after = transport.terminate(run)

    assert after.status is RunStatus.RUNNING
    assert pid_alive(supervisor.pid)  # same pid number here, but not that process


def test_an_outcome_its_dead_executor_left_behind_is_recorded(
    runs: RunStore, transport: DetachedTransport
) -> None:
    gone = subprocess.Popen(["sleep", "60"])
    identity = identity_of(gone.pid)
    assert identity is not None
    run = claim(runs, prepared(runs), identity)
    gone.kill()
    gone.wait()
    run_dir = runs.run_dir(run.id)
    run_dir.mkdir(parents=True)
    # The executor wrote the outcome, then could not record it (killed, or
    # the runs lock stayed busy past its patience).
    write_result(run_dir, Ended(RunStatus.FAILED, exit_code=3))

    assert not transport.alive(run)
    after = transport.terminate(run)

    assert (after.status, after.exit_code) == (RunStatus.FAILED, 3)
