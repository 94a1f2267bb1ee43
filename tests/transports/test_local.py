"""The local transport beyond the shared contract: watching wrappers another
process started, and claims left behind by a wrapper that died claiming."""

from __future__ import annotations

import select
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchctl.model.clock import SystemClock
from batchctl.model.fleet import FleetSource, load_fleet
from batchctl.model.models import RunStatus
from batchctl.transports.local import EMPTY_CLAIM_GRACE_S, EntryLookup, LocalTransport
from tests.transports.test_contract import Harness, running


def second_supervisor(harness: Harness) -> LocalTransport:
    """A worker's transport in another process: it started none of the runs."""
    fleet = FleetSource(lambda: load_fleet(harness.tmp / "fleet.yaml"))
    return LocalTransport(
        harness.runs,
        SystemClock(),
        entries=EntryLookup(harness.batches.raw),
        fleet=fleet,
        kill_grace_s=2,
    )


def readable_now(fds: list[int]) -> bool:
    return bool(fds) and bool(select.select(fds, [], [], 0)[0])


def test_an_adopted_wrapper_wakes_its_new_supervisor_once_and_is_let_go(
    tmp_path: Path, state_dir: Path
) -> None:
    """The worker watches a wrapper the `run` command started; once that run
    is stopped (no check looks at it again), its pidfd does not keep the
    worker's wait returning at once."""
    harness = Harness("local", tmp_path, state_dir)
    run = harness.prepare("hold")
    harness.transport.start([run])
    running(harness, run.id)
    worker = second_supervisor(harness)
    worker.check([harness.runs.get(run.id)], datetime.now(UTC))
    adopted = worker.wakeup_fds()
    assert len(adopted) == 1
    assert not readable_now(adopted)

    worker.terminate(harness.runs.get(run.id))
    deadline = time.monotonic() + 30
    while not harness.runs.get(run.id).status.terminal:
        assert time.monotonic() < deadline, "the run was not stopped"
        worker.check([harness.runs.get(run.id)], datetime.now(UTC))
        time.sleep(0.05)

    # One wake for the exit at most, then nothing left to wait on.
    worker.wakeup_fds()
    assert worker.wakeup_fds() == []


def test_a_claim_left_empty_by_a_dead_wrapper_ends_the_run_interrupted(
    tmp_path: Path, state_dir: Path
) -> None:
    harness = Harness("local", tmp_path, state_dir)
    run = harness.prepare("pass")
    claim = harness.runs.run_dir(run.id) / "claim"
    claim.parent.mkdir(parents=True)
    claim.touch()  # created, never written: its wrapper died in between
    looked_at = datetime.now(UTC)

    assert harness.transport.check([run], looked_at) == []  # it may be mid-claim
    later = looked_at + timedelta(seconds=EMPTY_CLAIM_GRACE_S + 1)
    assert harness.transport.check([harness.runs.get(run.id)], later) == [run.id]

    ended = harness.runs.get(run.id)
    assert ended.status is RunStatus.INTERRUPTED
    assert "died while claiming" in (ended.message or "")
