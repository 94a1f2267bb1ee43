"""Leases: judged by renewals seen to move, renewed however long a step takes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from batchctl.engine.dispatch import Dispatcher, Tuning
from batchctl.engine.lease import LeaseJudge
from batchctl.engine.worker import run_worker
from batchctl.model.clock import SystemClock
from batchctl.model.fleet import Fleet, FleetSource, Machine
from batchctl.model.models import Batch, Item, Lease, ProcessIdentity, Run, SkipCode
from batchctl.model.plan import load_plan_text
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore
from batchctl.transports.testdir import hash_test_dir
from tests.fakes import FakeClock, FakeTransport
from tests.helpers import make_suite

STALE_S = 0.6
NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def lease(beat: int) -> Lease:
    return Lease(token="t", pid=1, host="elsewhere", heartbeat_at=NOW, beat=beat)


def test_a_holder_elsewhere_is_dead_once_its_renewals_stand_still() -> None:
    clock = FakeClock()
    judge = LeaseJudge(stale_s=30, monotonic=clock.monotonic, identity_alive=lambda _: None)

    assert judge.live("b", lease(beat=1))
    clock.advance(29)
    assert judge.live("b", lease(beat=1))
    clock.advance(2)
    assert judge.live("b", lease(beat=2))  # it moved: alive, and the wait starts over
    clock.advance(29)
    assert judge.live("b", lease(beat=2))
    clock.advance(1)
    assert not judge.live("b", lease(beat=2))


class SlowTransport(FakeTransport):
    """Runs that take a step far longer than the lease threshold to look at."""

    step_s: float = 0.0

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        if self.step_s:
            time.sleep(self.step_s)  # the slow step under test, not a wait for something
            self.step_s = 0.0
            self.finish_running()
        return super().check(runs, now)


def dispatcher(
    batches: BatchStore, runs: RunStore, transport: SlowTransport, judge: LeaseJudge
) -> Dispatcher:
    me = ProcessIdentity(boot_id="b", pid_ns="n", pid=os.getpid(), start_ticks=1)
    fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    return Dispatcher(
        batches=batches,
        runs=runs,
        fleet_source=FleetSource(lambda: fleet),
        fleet_path=None,
        transports={"local": transport},
        clock=SystemClock(),
        tuning=Tuning(tick_s=0.01, lease_stale_s=STALE_S),
        this_host="here",
        this_pid=os.getpid(),
        judge=judge,
        this_process=lambda: me,
        identity_of=lambda pid: me,
        hash_dir=hash_test_dir,
        spawn_worker=lambda batch_id, fleet, token: os.getpid(),
    )


def one_item_batch(tmp_path: Path, state_dir: Path) -> tuple[BatchStore, RunStore]:
    """Stores holding batch b1 of one item, a."""
    make_suite(tmp_path / "suites", "ok")
    plan = load_plan_text(
        "version: 1\nentries:\n  - {name: a, dir: suites/ok}\n",
        path="plan.yaml",
        base_dir=tmp_path,
        source="inline",
        env_tag=None,
    )
    batches, runs = BatchStore(state_dir), RunStore(state_dir)
    now = SystemClock().now()
    batch = Batch(
        id="b1",
        plan_hash=plan.plan_hash,
        staging="s",
        created_by="t@h",
        created_at=now,
        expected_count=1,
        source="inline",
        entries=plan.entries,
        items={"a": Item(name="a", updated_at=now)},
    )
    batches.create_or_get(plan.plan_hash, "s", force_new=True, new_batch=lambda: batch)
    return batches, runs


def test_a_step_slower_than_the_lease_threshold_never_lets_a_second_worker_in(
    tmp_path: Path, state_dir: Path
) -> None:
    batches, runs = one_item_batch(tmp_path, state_dir)
    transport = SlowTransport(runs, FakeClock())
    transport.step_s = 5 * STALE_S
    # The worker's own judge can see its process; the contender's cannot (as
    # from another host) and goes by the renewal count alone.
    holder = dispatcher(
        batches, runs, transport, LeaseJudge(STALE_S, time.monotonic, lambda _: True)
    )
    contender_store = BatchStore(state_dir)
    contender_judge = LeaseJudge(STALE_S, time.monotonic, lambda _: None)
    stolen: list[str] = []
    done = threading.Event()

    def contend() -> None:
        while not done.is_set():
            current = contender_store.lease("b1")
            if current is not None and not contender_judge.live("b1", current):
                stolen.append(f"judged dead at beat {current.beat}")
            time.sleep(0.02)  # a contender polling, as `status` does

    thread = threading.Thread(target=contend)
    thread.start()
    try:
        code = run_worker(
            "b1", holder, wait=lambda fds, timeout: time.sleep(timeout), log=lambda line: None
        )
    finally:
        done.set()
        thread.join()

    assert code == 0
    assert stolen == []
    assert batches.get("b1").lease is None  # released at the end, not lost


def test_a_look_at_a_batch_that_just_ended_starts_no_worker(
    tmp_path: Path, state_dir: Path
) -> None:
    batches, runs = one_item_batch(tmp_path, state_dir)
    spawned: list[str] = []
    looker = dispatcher(
        batches,
        runs,
        SlowTransport(runs, FakeClock()),
        LeaseJudge(STALE_S, time.monotonic, lambda _: False),
    )

    def spawn(batch_id: str, fleet: str | None, token: str) -> int:
        spawned.append(batch_id)
        return 1

    looker.spawn_worker = spawn
    token = looker.take_lease("b1")
    assert token is not None
    # The worker skipped its only item and let go of the batch.
    batches.apply_items("b1", {"a": batches.item("b1", "a").skipped(SkipCode.CANCELLED, NOW)})
    assert looker.finish_batch("b1", token)

    assert not looker.ensure_worker("b1")
    assert spawned == []


def test_a_batch_queued_again_before_its_worker_lets_go_is_not_marked_finished(
    tmp_path: Path, state_dir: Path
) -> None:
    """A retry between the worker's last step and its letting go: the worker
    keeps the lease and goes on, instead of marking a batch with queued
    items finished (nobody would ever serve it)."""
    batches, runs = one_item_batch(tmp_path, state_dir)
    worker = dispatcher(
        batches,
        runs,
        SlowTransport(runs, FakeClock()),
        LeaseJudge(STALE_S, time.monotonic, lambda _: False),
    )
    token = worker.take_lease("b1")
    assert token is not None

    assert not worker.finish_batch("b1", token)  # its item is queued

    stored = batches.file.read()["batches"]["b1"]
    assert stored.get("finished") is not True
    assert stored["lease"]["token"] == token
