"""The scheduler's step, driven tick by tick: fake clock, fake transport, no
processes, no sleeps. Stores are the real ones on a temp directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchctl.engine.lease import LeaseJudge
from batchctl.engine.scheduler import Scheduler, SchedulerSettings
from batchctl.model.errors import LeaseLost
from batchctl.model.fleet import Drain, Fleet, Machine
from batchctl.model.models import Batch, Item, ItemState, Lease, RunStatus, SkipCode
from batchctl.model.plan import load_plan_text
from batchctl.model.policy import Backoff
from batchctl.model.views import FleetContext
from batchctl.state.batches import BatchStore
from batchctl.state.drains import DrainStore
from batchctl.state.durations import DurationStore
from batchctl.state.runs import PrepareRequest, RunStore
from batchctl.transports.testdir import hash_test_dir
from tests.fakes import FakeClock, FakeTransport, batch_view
from tests.helpers import make_suite


@dataclass
class World:
    tmp: Path
    clock: FakeClock
    batches: BatchStore
    runs: RunStore
    transport: FakeTransport
    fleet: Fleet

    def batch(
        self,
        plan: str,
        batch_id: str = "b1",
        staging: str = "s",
        max_parallel: int | None = None,
        priority: int = 1,
    ) -> Batch:
        for name in ("ok", "other"):
            make_suite(self.tmp / "suites", name)
        (self.tmp / "suites" / "no-entrypoint").mkdir(exist_ok=True)
        loaded = load_plan_text(
            textwrap.dedent(plan),
            path="plan.yaml",
            base_dir=self.tmp,
            source="inline",
            env_tag=None,
        )
        now = self.clock.now()
        batch = Batch(
            id=batch_id,
            plan_hash=loaded.plan_hash,
            staging=staging,
            created_by="t@h",
            created_at=now,
            expected_count=len(loaded.entries),
            source="inline",
            entries=loaded.entries,
            items={e.name: Item(name=e.name, updated_at=now) for e in loaded.entries},
            max_parallel=max_parallel,
            priority=priority,
        )
        created, _ = self.batches.create_or_get(
            loaded.plan_hash, staging, force_new=True, new_batch=lambda: batch
        )
        return created

    def scheduler(
        self,
        token: str | None = None,
        older: bool = False,
        drained: Callable[[], Mapping[str, Drain]] | None = None,
        durations: DurationStore | None = None,
        critical_path_first: bool = True,
    ) -> Scheduler:
        return Scheduler(
            batches=self.batches,
            runs=self.runs,
            fleet=self.fleet,
            transports={"local": self.transport},
            lease_token=token,
            settings=SchedulerSettings(
                launch_grace_s=30,
                backoff=Backoff(base_s=4, cap_s=60),
                critical_path_first=critical_path_first,
            ),
            hash_dir=hash_test_dir,
            lease_judge=LeaseJudge(
                stale_s=30, monotonic=self.clock.monotonic, identity_alive=lambda identity: True
            )
            if older
            else None,
            uniform=lambda low, high: low,  # no jitter: the backoff is exactly half its ceiling
            drained=drained,
            durations=durations,
        )

    def outcomes(self, batch_id: str = "b1") -> dict[str, str]:
        batch = self.batches.get(batch_id)
        runs = self.runs.get_many(i.run_id for i in batch.items.values() if i.run_id)
        return {item.name: item.outcome for item in batch_view(batch, runs).items}

    def run_of(self, item: str, batch_id: str = "b1") -> str:
        run_id = self.batches.get(batch_id).items[item].run_id
        assert run_id is not None
        return run_id


@pytest.fixture
def world(tmp_path: Path, state_dir: Path) -> World:
    clock = FakeClock()
    runs = RunStore(state_dir)
    return World(
        tmp=tmp_path,
        clock=clock,
        batches=BatchStore(state_dir),
        runs=runs,
        transport=FakeTransport(runs, clock),
        fleet=Fleet(machines=(Machine(name="m1", tags=("local",), slots=4),), source="test"),
    )


def entries(*lines: str) -> str:
    return "version: 1\nentries:\n" + "".join(f"  - {line}\n" for line in lines)


def test_items_wait_for_needs_and_independent_chains_do_not_wait(world: World) -> None:
    world.batch(
        entries(
            "{name: a, dir: suites/ok}",
            "{name: b, dir: suites/ok, needs: [a]}",
            "{name: x, dir: suites/ok}",
            "{name: y, dir: suites/ok, needs: [x]}",
        )
    )
    scheduler = world.scheduler()

    first = scheduler.step("b1", world.clock.now())
    assert sorted(first.dispatched) == ["a", "x"]
    assert world.outcomes() == {"a": "running", "b": "waiting", "x": "running", "y": "waiting"}

    world.transport.finish(world.run_of("x"))
    second = scheduler.step("b1", world.clock.advance(1))
    assert second.dispatched == ["y"]  # x's chain moves on while a still runs
    assert world.outcomes()["b"] == "waiting"

    world.transport.finish_running()
    scheduler.step("b1", world.clock.advance(1))
    world.transport.finish_running()
    last = scheduler.step("b1", world.clock.advance(1))
    assert last.done
    assert set(world.outcomes().values()) == {"passed"}


def test_a_machine_never_holds_more_runs_than_its_slots(world: World) -> None:
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    world.batch(entries(*(f"{{name: i{n}, dir: suites/ok}}" for n in range(3))))
    scheduler = world.scheduler()

    for tick in range(3):
        report = scheduler.step("b1", world.clock.advance(1))
        assert len(report.dispatched) == 1, tick
        assert len(world.runs.non_terminal()) == 1
        scheduler.step("b1", world.clock.advance(1))  # busy: nothing more
        assert len(world.runs.non_terminal()) == 1
        world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).done


def test_unrunnable_items_are_skipped_with_their_code(world: World) -> None:
    world.batch(
        entries(
            "{name: nomachine, dir: suites/ok, tag: gpu}",
            "{name: noentry, dir: suites/no-entrypoint}",
            "{name: gone, dir: suites/vanished}",
        )
    )
    report = world.scheduler().step("b1", world.clock.now())

    batch = world.batches.get("b1")
    assert {n: batch.items[n].error_code for n in ("nomachine", "noentry", "gone")} == {
        "nomachine": SkipCode.NO_MATCHING_MACHINE,
        "noentry": SkipCode.ENTRYPOINT_MISSING,
        "gone": SkipCode.DIR_MISSING,
    }
    assert report.done


def test_a_failed_need_skips_dependents_transitively_with_blame(world: World) -> None:
    world.batch(
        entries(
            "{name: a, dir: suites/ok}",
            "{name: b, dir: suites/ok, needs: [a]}",
            "{name: c, dir: suites/ok, needs: [b]}",
            "{name: free, dir: suites/ok}",
        )
    )
    world.transport.outcomes["a"] = (RunStatus.FAILED, 1)
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.transport.finish_running()

    report = scheduler.step("b1", world.clock.advance(1))

    batch = world.batches.get("b1")
    assert sorted(report.skipped) == ["b", "c"]
    assert (batch.items["b"].error_code, batch.items["b"].blame) == (SkipCode.DEP_FAILED, "a#1")
    assert (batch.items["c"].error_code, batch.items["c"].blame) == (SkipCode.DEP_FAILED, "a#1")
    assert world.outcomes() == {"a": "failed", "b": "skipped", "c": "skipped", "free": "passed"}
    assert report.done


def test_lost_executor_is_interrupted_and_retried_as_a_new_attempt(world: World) -> None:
    world.batch(entries("{name: a, dir: suites/ok, retries: 1}"))
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    first_run = world.run_of("a")
    world.transport.dead_executors.add(first_run)

    # One tick reaps the lost run and re-queues the item behind its backoff.
    retried = scheduler.step("b1", world.clock.advance(1))
    assert retried.interrupted == ["a"]
    assert world.runs.get(first_run).status is RunStatus.INTERRUPTED
    assert retried.requeued == ["a"]
    assert retried.dispatched == []
    assert world.outcomes() == {"a": "queued"}

    assert scheduler.step("b1", world.clock.advance(1.5)).dispatched == []  # backoff is 2s
    assert scheduler.step("b1", world.clock.advance(0.5)).dispatched == ["a"]
    item = world.batches.get("b1").items["a"]
    assert (item.attempt, item.history) == (2, (first_run,))
    assert item.run_id != first_run
    world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).done
    assert world.outcomes() == {"a": "passed"}


def test_a_failed_run_is_not_retried_unless_failed_is_listed(world: World) -> None:
    world.batch(
        entries(
            "{name: plain, dir: suites/ok, retries: 2}",
            "{name: listed, dir: suites/ok, retries: 2, retry_on: [failed]}",
        )
    )
    world.transport.outcomes = {"plain": (RunStatus.FAILED, 3), "listed": (RunStatus.FAILED, 3)}
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.transport.finish_running()
    report = scheduler.step("b1", world.clock.advance(1))

    assert report.requeued == ["listed"]
    items = world.batches.get("b1").items
    assert (items["plain"].attempt, items["listed"].attempt) == (1, 2)


def test_a_step_without_the_lease_writes_nothing(world: World) -> None:
    world.batch(entries("{name: a, dir: suites/ok}"))
    world.batches.swap_lease(
        "b1",
        when=lambda lease: True,
        new_lease=Lease(token="theirs", pid=1, host="h", heartbeat_at=world.clock.now()),
    )

    with pytest.raises(LeaseLost):
        world.scheduler(token="mine").step("b1", world.clock.now())

    assert world.batches.get("b1").items["a"].state is ItemState.QUEUED
    assert world.transport.started == []
    assert world.runs.non_terminal() == []  # no slot held by an orphaned run


def test_runs_prepared_by_a_worker_killed_before_its_decision_are_reclaimed(
    world: World,
) -> None:
    """A worker killed between its two writes of a step (the runs, then the
    decisions naming them) leaves runs no item points at, holding every slot.
    The next worker dispatches and starts them when it loads the batch."""
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="test")
    world.batch(entries("{name: a, dir: suites/ok}"))
    [orphan] = world.runs.prepare_many(
        [PrepareRequest("b1", "a", 1, ["m1"], str(world.tmp / "suites" / "ok"), "h")],
        slots={"m1": 1},
        now=world.clock.now(),
    )
    assert orphan.run is not None

    successor = world.scheduler()
    successor.load("b1", world.clock.now())

    assert world.run_of("a") == orphan.run.id  # dispatched as its worker meant
    assert world.transport.started == [orphan.run.id]
    assert world.batches.get("b1").items["a"].attempt == 1


def test_a_pending_run_whose_starter_died_is_started_once_after_the_grace(world: World) -> None:
    world.batch(entries("{name: a, dir: suites/ok}"))
    dying = world.scheduler()
    dying.transports = {}  # prepares and records, but never starts the run
    dying.step("b1", world.clock.now())
    run_id = world.run_of("a")

    successor = world.scheduler()
    successor.step("b1", world.clock.advance(5))
    assert world.transport.started == []  # within the grace: its starter may be slow
    successor.step("b1", world.clock.advance(30))
    successor.step("b1", world.clock.advance(1))
    assert world.transport.started == [run_id]
    assert world.transport.executions == [run_id]


def lease_both(world: World, *batch_ids: str) -> None:
    for batch_id in batch_ids:
        world.batches.swap_lease(
            batch_id,
            when=lambda lease: True,
            new_lease=Lease(token=batch_id, pid=1, host="h", heartbeat_at=world.clock.now()),
        )


def test_batches_sharing_one_slot_take_turns(world: World) -> None:
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    world.batch(entries("{name: old1, dir: suites/ok}", "{name: old2, dir: suites/ok}"), "old")
    world.batch(entries("{name: new1, dir: suites/other}"), "new", staging="other")
    lease_both(world, "old", "new")
    old, new = world.scheduler("old", older=True), world.scheduler("new", older=True)

    assert old.step("old", world.clock.now()).dispatched == ["old1"]
    assert new.step("new", world.clock.advance(1)).dispatched == []  # publishes its demand
    world.transport.finish_running()
    # Neither holds the slot now; old has had a run, new none: it is new's
    # turn, though old is older and steps first.
    assert old.step("old", world.clock.advance(1)).dispatched == []
    assert new.step("new", world.clock.advance(1)).dispatched == ["new1"]
    world.transport.finish_running()
    assert new.step("new", world.clock.advance(1)).done
    assert old.step("old", world.clock.advance(1)).dispatched == ["old2"]


def test_batches_of_equal_priority_take_turns_not_oldest_first(world: World) -> None:
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=2),), source="t")
    world.batch(entries(*(f"{{name: big{n}, dir: suites/ok}}" for n in range(8))), "big")
    world.batch(entries(*(f"{{name: small{n}, dir: suites/other}}" for n in range(3))), "small")
    lease_both(world, "big", "small")
    big, small = world.scheduler("big", older=True), world.scheduler("small", older=True)

    assert len(big.step("big", world.clock.now()).dispatched) == 2
    # Every slot is taken: the small batch publishes what waits.
    assert small.step("small", world.clock.advance(1)).dispatched == []
    taken: dict[str, int] = {"big": 0, "small": 0}
    for _ in range(3):
        world.transport.finish_running()
        # Two free slots, neither batch holds one: one each, whoever steps first.
        taken["big"] += len(big.step("big", world.clock.advance(1)).dispatched)
        taken["small"] += len(small.step("small", world.clock.advance(1)).dispatched)
    assert taken == {"big": 3, "small": 3}
    assert set(world.outcomes("small").values()) == {"passed", "running"}


def test_a_higher_priority_gets_its_weight_in_slots(world: World) -> None:
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=4),), source="t")
    world.batch(entries(*(f"{{name: low{n}, dir: suites/ok}}" for n in range(12))), "low")
    world.batch(
        entries(*(f"{{name: high{n}, dir: suites/other}}" for n in range(12))),
        "high",
        staging="other",
        priority=3,
    )
    lease_both(world, "low", "high")
    low, high = world.scheduler("low", older=True), world.scheduler("high", older=True)
    low.step("low", world.clock.now())
    high.step("high", world.clock.advance(1))  # nothing free: publishes its demand
    world.transport.finish_running()
    # Four free slots shared 3:1, though the low-priority batch is older and steps first.
    assert len(low.step("low", world.clock.advance(1)).dispatched) == 1
    assert len(high.step("high", world.clock.advance(1)).dispatched) == 3


def test_cancelled_batch_skips_queued_items_and_stops_runs(world: World) -> None:
    world.batch(entries("{name: a, dir: suites/ok}", "{name: b, dir: suites/ok, needs: [a]}"))
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.batches.decide("b1", lambda batch: [{"op": "cancel", "batch": batch.id}])

    report = scheduler.step("b1", world.clock.advance(1))

    assert report.skipped == ["b"]
    assert world.batches.get("b1").items["b"].error_code is SkipCode.CANCELLED
    assert world.runs.get(world.run_of("a")).status is RunStatus.INTERRUPTED
    assert world.outcomes() == {"a": "interrupted", "b": "skipped"}


def test_a_retry_prefers_a_machine_the_item_has_not_failed_on(world: World) -> None:
    world.fleet = Fleet(
        machines=(
            Machine(name="m1", tags=("local",), slots=1),
            Machine(name="m2", tags=("local",), slots=1),
        ),
        source="t",
    )
    world.batch(entries("{name: a, dir: suites/ok, retries: 2, retry_on: [failed]}"))
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    assert world.batches.get("b1").items["a"].machine == "m1"  # first in fleet order
    world.transport.finish(world.run_of("a"), RunStatus.FAILED, 1)

    scheduler.step("b1", world.clock.advance(1))  # re-queued behind its backoff
    scheduler.step("b1", world.clock.advance(10))

    item = world.batches.get("b1").items["a"]
    assert (item.attempt, item.machine) == (2, "m2")


def test_items_no_machine_takes_in_time_are_skipped_queue_timeout(world: World) -> None:
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    batch = world.batch(entries("{name: hog, dir: suites/ok}", "{name: starved, dir: suites/ok}"))
    world.batches.remove({batch.id})
    world.batches.create_or_get(
        batch.plan_hash,
        "s",
        force_new=True,
        new_batch=lambda: batch.model_copy(update={"queue_timeout_s": 60}),
    )
    world.transport.hold.add("hog")
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.transport.finish_running()

    assert scheduler.step("b1", world.clock.advance(59)).skipped == []
    report = scheduler.step("b1", world.clock.advance(1))

    assert report.skipped == ["starved"]
    assert world.batches.get("b1").items["starved"].error_code is SkipCode.QUEUE_TIMEOUT
    assert world.outcomes() == {"hog": "running", "starved": "skipped"}


def test_offline_machines_receive_no_runs_and_items_wait_for_them(world: World) -> None:
    world.fleet = Fleet(
        machines=(
            Machine(name="up", tags=("local",), slots=1),
            Machine(name="down", tags=("gpu",), slots=4, online=False, source="inventory:http"),
        ),
        source="t",
    )
    world.batch(entries("{name: cpu, dir: suites/ok}", "{name: gpu, dir: suites/ok, tag: gpu}"))

    report = world.scheduler().step("b1", world.clock.now())

    assert report.dispatched == ["cpu"]
    assert report.skipped == []  # waiting for the machine to come back, not skipped
    batch = world.batches.get("b1")
    assert batch.items["gpu"].state is ItemState.QUEUED
    runs = world.runs.get_many(i.run_id for i in batch.items.values() if i.run_id)
    context = FleetContext(fleet=world.fleet, held={"up": 1}, now=world.clock.now())
    reasons = {i.name: i.reason for i in batch_view(batch, runs, context).items}
    assert reasons["gpu"] == "every machine matching tag:gpu is offline"


def test_a_cancelled_batch_with_retries_left_is_done_once_its_runs_end(world: World) -> None:
    world.batch(entries("{name: a, dir: suites/ok, retries: 3}"))
    world.transport.hold.add("a")
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.batches.decide("b1", lambda batch: [{"op": "cancel", "batch": batch.id}])

    report = scheduler.step("b1", world.clock.advance(1))

    assert world.outcomes() == {"a": "interrupted"}
    assert report.requeued == []  # a cancelled batch retries nothing
    assert report.done
    assert batch_view(world.batches.get("b1"), world.runs.get_many([world.run_of("a")])).done


def test_a_run_its_own_starter_launched_but_nobody_claimed_is_started_again(
    world: World,
) -> None:
    world.batch(entries("{name: a, dir: suites/ok}"))
    scheduler = world.scheduler()
    world.transport.lose_starts = 1  # the first executor dies before claiming
    scheduler.step("b1", world.clock.now())
    run_id = world.run_of("a")
    assert world.transport.executions == []

    scheduler.step("b1", world.clock.advance(31))

    assert world.transport.started == [run_id, run_id]
    assert world.transport.executions == [run_id]


def test_a_dispatched_item_whose_run_record_vanished_does_not_hold_the_batch_open(
    world: World,
) -> None:
    world.batch(entries("{name: a, dir: suites/ok}", "{name: b, dir: suites/ok, needs: [a]}"))
    world.scheduler().step("b1", world.clock.now())
    for name in ("runs.json", "runs.journal"):
        (world.runs.state_dir / name).unlink(missing_ok=True)

    report = (
        World(
            world.tmp,
            world.clock,
            world.batches,
            RunStore(world.runs.state_dir),
            world.transport,
            world.fleet,
        )
        .scheduler()
        .step("b1", world.clock.advance(1))
    )

    assert report.done
    assert report.skipped == ["b"]


# -- fleet governance: drained machines and caps -------------------------------


def reasons_of(world: World, batch_id: str, context: FleetContext) -> dict[str, tuple[str, str]]:
    batch = world.batches.get(batch_id)
    runs = world.runs.get_many(i.run_id for i in batch.items.values() if i.run_id)
    return {
        i.name: (i.reason_code or "", i.reason or "")
        for i in batch_view(batch, runs, context).items
        if i.state == "queued"
    }


def machines_of(world: World, batch_id: str = "b1") -> dict[str, str | None]:
    return {name: item.machine for name, item in world.batches.get(batch_id).items.items()}


def test_a_drained_machine_finishes_its_run_takes_nothing_new_and_resumes(
    world: World, state_dir: Path
) -> None:
    world.fleet = Fleet(
        machines=(
            Machine(name="m1", tags=("local",), slots=1),
            Machine(name="m2", tags=("local",), slots=1),
        ),
        source="t",
    )
    world.batch(entries(*(f"{{name: i{n}, dir: suites/ok}}" for n in range(5))))
    drains = DrainStore(state_dir)
    scheduler = world.scheduler(drained=drains.drained)

    assert scheduler.step("b1", world.clock.now()).dispatched == ["i0", "i1"]
    assert machines_of(world)["i1"] == "m2"
    drains.drain("m2", reason="disk swap", by="t@h", now=world.clock.now())

    # m2's run goes on and ends; m2 takes nothing new, m1 goes on alone.
    world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["i2"]
    assert machines_of(world)["i2"] == "m1"
    assert world.outcomes()["i1"] == "passed"
    context = FleetContext(
        fleet=world.fleet, held=world.runs.held(), now=world.clock.now(), drained=drains.drained()
    )
    assert reasons_of(world, "b1", context)["i3"] == (
        "busy",
        "all 1 machine with tag local busy (1 drained)",
    )

    drains.resume("m2")
    world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["i3", "i4"]
    assert {machines_of(world)["i3"], machines_of(world)["i4"]} == {"m1", "m2"}


def test_items_whose_every_machine_is_drained_wait_with_that_reason_not_skipped(
    world: World, state_dir: Path
) -> None:
    world.batch(entries("{name: a, dir: suites/ok}"))
    drains = DrainStore(state_dir)
    drains.drain("m1", reason="kernel upgrade", by="t@h", now=world.clock.now())
    scheduler = world.scheduler(drained=drains.drained)

    for _ in range(3):
        report = scheduler.step("b1", world.clock.advance(5))
        assert (report.dispatched, report.skipped) == ([], [])
    context = FleetContext(
        fleet=world.fleet, held=world.runs.held(), now=world.clock.now(), drained=drains.drained()
    )
    assert reasons_of(world, "b1", context)["a"] == (
        "drained",
        "every machine matching tag:local is drained (m1: kernel upgrade)",
    )

    drains.resume("m1")
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["a"]


def test_a_tag_limit_caps_runs_across_batches(world: World) -> None:
    world.fleet = Fleet(
        machines=(
            Machine(name="g1", tags=("gpu",), slots=2),
            Machine(name="g2", tags=("gpu",), slots=2),
        ),
        source="t",
        limits={"gpu": 1},
    )
    world.batch(
        entries("{name: a1, dir: suites/ok, tag: gpu}", "{name: a2, dir: suites/ok, tag: gpu}"), "A"
    )
    world.batch(
        entries(
            "{name: b1, dir: suites/other, tag: gpu}", "{name: b2, dir: suites/other, tag: gpu}"
        ),
        "B",
        staging="other",
    )
    first, second = world.scheduler(), world.scheduler()
    most = 0
    for _ in range(12):
        first.step("A", world.clock.advance(1))
        second.step("B", world.clock.advance(1))
        held = world.runs.held()
        most = max(most, held.get("g1", 0) + held.get("g2", 0))
        if held:
            context = FleetContext(fleet=world.fleet, held=held, now=world.clock.now())
            waiting = {**reasons_of(world, "A", context), **reasons_of(world, "B", context)}
            assert {code for code, _ in waiting.values()} <= {"cap"}
            assert all("gpu: 1" in text for _, text in waiting.values())
        world.transport.finish_running()
    assert most == 1
    assert set(world.outcomes("A").values()) == set(world.outcomes("B").values()) == {"passed"}


def test_batches_sharing_a_capped_tag_alternate_and_never_both_wait(world: World) -> None:
    world.fleet = Fleet(
        machines=(
            Machine(name="g1", tags=("gpu",), slots=2),
            Machine(name="g2", tags=("gpu",), slots=2),
        ),
        source="t",
        limits={"gpu": 1},
    )
    world.batch(entries(*(f"{{name: a{n}, dir: suites/ok, tag: gpu}}" for n in range(3))), "A")
    world.batch(
        entries(*(f"{{name: b{n}, dir: suites/other, tag: gpu}}" for n in range(3))),
        "B",
        staging="other",
    )
    lease_both(world, "A", "B")
    first, second = world.scheduler("A", older=True), world.scheduler("B", older=True)
    started: list[str] = []
    for _ in range(6):
        started += first.step("A", world.clock.advance(1)).dispatched
        started += second.step("B", world.clock.advance(1)).dispatched
        held = world.runs.held()
        assert held.get("g1", 0) + held.get("g2", 0) <= 1
        world.transport.finish_running()
    # The one unit of the cap goes to each batch in turn: the slot held back
    # for one batch is never also counted by the other.
    assert started == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_max_parallel_runs_a_batch_one_at_a_time_on_a_large_machine(world: World) -> None:
    world.batch(entries(*(f"{{name: i{n}, dir: suites/ok}}" for n in range(3))), max_parallel=1)
    scheduler = world.scheduler()

    for expected in ("i0", "i1", "i2"):
        assert scheduler.step("b1", world.clock.advance(1)).dispatched == [expected]
        assert scheduler.step("b1", world.clock.advance(1)).dispatched == []
        context = FleetContext(fleet=world.fleet, held=world.runs.held(), now=world.clock.now())
        for code, text in reasons_of(world, "b1", context).values():
            assert (code, text) == ("cap", "the batch runs at most 1 at once (--max-parallel 1)")
        # Held back by its own cap, the batch claims no slot from other batches.
        assert world.batches.get("b1").demand == {}
        world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).done


CHAIN_AND_SHORT_ITEMS = entries(
    "{name: short1, dir: suites/ok}",
    "{name: short2, dir: suites/ok}",
    "{name: head, dir: suites/other}",
    "{name: tail, dir: suites/other, needs: [head]}",
)


def learn_durations(world: World, store: DurationStore, took: Mapping[str, float]) -> None:
    """Runs the plan once, each item taking ``took`` seconds, one at a time,
    and keeps what the worker learned."""
    world.batch(CHAIN_AND_SHORT_ITEMS, "first")
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    scheduler = world.scheduler(durations=store)
    now = world.clock.now()
    while not (report := scheduler.step("first", now)).done:
        for name in report.dispatched:
            world.clock.advance(took[name])
            world.transport.finish(world.run_of(name, "first"))
        now = world.clock.advance(0.001)
    assert scheduler.keep_durations("first", world.clock.now()) is None


def dispatch_order(world: World, scheduler: Scheduler, batch_id: str) -> list[str]:
    order: list[str] = []
    while not (report := scheduler.step(batch_id, world.clock.advance(1))).done:
        order.extend(report.dispatched)
        world.transport.finish_running()
    return order


def test_with_history_the_longest_chain_starts_first(world: World, state_dir: Path) -> None:
    store = DurationStore(state_dir)
    learn_durations(world, store, {"short1": 5, "short2": 5, "head": 20, "tail": 20})
    assert len(store.expected()) == 4

    world.batch(CHAIN_AND_SHORT_ITEMS, "again", staging="again")
    # One slot: the chain (40 s) before the short items (5 s), and once head
    # has passed, tail (20 s) still before them.
    assert dispatch_order(world, world.scheduler(durations=store), "again") == [
        "head",
        "tail",
        "short1",
        "short2",
    ]
    # First in, first out: authored order among the ready items.
    world.batch(CHAIN_AND_SHORT_ITEMS, "fifo", staging="fifo")
    assert dispatch_order(
        world, world.scheduler(durations=store, critical_path_first=False), "fifo"
    ) == ["short1", "short2", "head", "tail"]


def test_an_edited_item_has_no_history(world: World, state_dir: Path) -> None:
    store = DurationStore(state_dir)
    learn_durations(world, store, {"short1": 30, "short2": 30, "head": 5, "tail": 5})
    world.batch(CHAIN_AND_SHORT_ITEMS, "same", staging="same")
    assert dispatch_order(world, world.scheduler(durations=store), "same")[0] == "short1"

    # The short items' directory changes: their 30 s were another content's.
    # The median of what is known (the chain's 5 s) stands in for each, so
    # the chain (10 s) goes first.
    world.batch(CHAIN_AND_SHORT_ITEMS, "edited", staging="edited")
    (world.tmp / "suites" / "ok" / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    scheduler = world.scheduler(durations=store)
    assert dispatch_order(world, scheduler, "edited")[0] == "head"
    assert scheduler.keep_durations("edited", world.clock.now()) is None
    # Kept beside the old content's: 4 + the two edited items.
    assert len(DurationStore(state_dir).expected()) == 6


def test_a_batch_read_again_teaches_nothing_new(world: World, state_dir: Path) -> None:
    """A takeover or a resume reads a batch whose items passed long ago: what
    they took was kept when they ended, and is not counted a second time
    (it would outweigh the newer figures of other batches)."""
    store = DurationStore(state_dir)
    learn_durations(world, store, {"short1": 5, "short2": 5, "head": 20, "tail": 20})
    world.batch(CHAIN_AND_SHORT_ITEMS, "newer", staging="newer")
    world.fleet = Fleet(machines=(Machine(name="m1", tags=("local",), slots=1),), source="t")
    scheduler = world.scheduler(durations=store)
    now = world.clock.now()
    while not (report := scheduler.step("newer", now)).done:
        for name in report.dispatched:
            world.clock.advance(9)
            world.transport.finish(world.run_of(name, "newer"))
        now = world.clock.advance(0.001)
    assert scheduler.keep_durations("newer", world.clock.now()) is None
    after_newer = store.expected()

    # A new worker loads the first batch, finished long ago, and steps it.
    successor = world.scheduler(durations=store)
    successor.load("first", world.clock.now())
    assert successor.step("first", world.clock.advance(1)).done
    assert successor.keep_durations("first", world.clock.now()) is None
    assert store.expected() == after_newer


def test_a_damaged_durations_file_only_loses_the_history(world: World, state_dir: Path) -> None:
    store = DurationStore(state_dir)
    learn_durations(world, store, {"short1": 5, "short2": 5, "head": 20, "tail": 20})
    store.file.path.write_text("{not json")
    world.batch(CHAIN_AND_SHORT_ITEMS, "again", staging="again")
    # The next worker, a process that has not read the file before.
    scheduler = world.scheduler(durations=DurationStore(state_dir))
    # Every item the same unknown length: the two-item chain is the longest.
    assert dispatch_order(world, scheduler, "again")[0] == "head"
    assert "durations.json" in (scheduler.keep_durations("again", world.clock.now()) or "")
