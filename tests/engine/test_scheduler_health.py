"""The scheduler with machine health: quarantined machines take no runs,
and a retry waits a little for a machine it has not failed on."""

from __future__ import annotations

from pathlib import Path

from batchctl.engine.health import HealthKeeper
from batchctl.model.fleet import Fleet, Machine
from batchctl.model.health import HealthSpec
from batchctl.model.models import ItemState, RunStatus
from batchctl.model.views import FleetContext
from batchctl.state.health import HealthStore
from tests.engine.test_scheduler import World, entries, machines_of, reasons_of, world

__all__ = ["world"]  # the fixture, used by name


def two_machines(health: HealthSpec | None = None) -> Fleet:
    return Fleet(
        machines=(
            Machine(name="m1", tags=("local",), slots=1),
            Machine(name="m2", tags=("local",), slots=1),
        ),
        source="t",
        health=health or HealthSpec(),
    )


def test_a_retry_waits_for_a_busy_machine_it_has_not_failed_on_and_others_go_first(
    world: World,
) -> None:
    world.fleet = two_machines()
    world.batch(
        entries(
            "{name: a, dir: suites/ok, retries: 1, retry_on: [failed]}",
            *(f"{{name: {name}, dir: suites/ok}}" for name in ("b", "c", "d")),
        )
    )
    scheduler = world.scheduler()
    assert scheduler.step("b1", world.clock.now()).dispatched == ["a", "b"]
    assert machines_of(world)["a"] == "m1"
    world.transport.hold.add("b")
    world.transport.finish(world.run_of("a"), RunStatus.FAILED, 1)
    # Queued again behind its backoff; the next item takes m1 meanwhile.
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["c"]
    world.transport.finish_running()

    # Only m1, where it failed, is free: the retry waits; the next item takes m1.
    assert scheduler.step("b1", world.clock.advance(3)).dispatched == ["d"]
    assert machines_of(world)["d"] == "m1"
    assert world.batches.get("b1").items["a"].state is ItemState.QUEUED

    # m2 frees up within the wait: the retry runs there.
    world.transport.hold.discard("b")
    world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["a"]
    item = world.batches.get("b1").items["a"]
    assert (item.attempt, item.machine) == (2, "m2")


def test_a_retry_goes_back_to_the_machine_it_failed_on_once_the_wait_is_over(
    world: World,
) -> None:
    world.fleet = two_machines(HealthSpec(retry_elsewhere=20))
    world.batch(
        entries(
            "{name: a, dir: suites/ok, retries: 1, retry_on: [failed]}", "{name: b, dir: suites/ok}"
        )
    )
    scheduler = world.scheduler()
    scheduler.step("b1", world.clock.now())
    world.transport.hold.add("b")
    world.transport.finish(world.run_of("a"), RunStatus.FAILED, 1)
    scheduler.step("b1", world.clock.advance(1))

    assert scheduler.step("b1", world.clock.advance(3)).dispatched == []  # ready at +2s
    assert scheduler.step("b1", world.clock.advance(18)).dispatched == []
    assert scheduler.step("b1", world.clock.advance(2)).dispatched == ["a"]
    item = world.batches.get("b1").items["a"]
    assert (item.attempt, item.machine) == (2, "m1")


def test_a_machine_failing_runs_of_different_items_is_quarantined_and_gets_no_more(
    world: World, state_dir: Path
) -> None:
    world.fleet = two_machines(HealthSpec(failures=2))
    world.batch(entries(*(f"{{name: i{n}, dir: suites/ok}}" for n in range(8))))
    store = HealthStore(state_dir)
    keeper = HealthKeeper(store, world.fleet, state_dir=state_dir, by="test")
    scheduler = world.scheduler()
    scheduler.health = keeper
    # Every run on m2 ends in an infrastructure error.
    world.transport.outcomes.update(
        {f"i{n}": (RunStatus.ERROR, None) for n in range(8) if n % 2 == 1}
    )

    assert scheduler.step("b1", world.clock.now()).dispatched == ["i0", "i1"]
    world.transport.finish_running()
    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["i2", "i3"]
    assert machines_of(world)["i3"] == "m2"
    assert store.quarantined() == {}
    world.transport.finish_running()
    world.transport.hold.add("i4")

    assert scheduler.step("b1", world.clock.advance(1)).dispatched == ["i4"]
    assert machines_of(world)["i4"] == "m1"
    assert list(store.quarantined()) == ["m2"]
    context = FleetContext(
        fleet=world.fleet,
        held=world.runs.held(),
        now=world.clock.now(),
        quarantined=store.quarantined(),
    )
    assert reasons_of(world, "b1", context)["i5"] == (
        "busy",
        "all 1 machine with tag local busy (1 quarantined)",
    )
    world.transport.hold.discard("i4")
    for _ in range(4):
        world.transport.finish_running()
        scheduler.step("b1", world.clock.advance(1))
    assert {machines_of(world)[f"i{n}"] for n in range(4, 8)} == {"m1"}


def test_an_item_whose_every_machine_is_quarantined_says_so(world: World, state_dir: Path) -> None:
    world.fleet = two_machines(HealthSpec(failures=1, max_quarantined=1))
    world.batch(
        entries(
            "{name: a, dir: suites/ok}", "{name: b, dir: suites/ok}", "{name: c, dir: suites/ok}"
        )
    )
    store = HealthStore(state_dir)
    scheduler = world.scheduler()
    scheduler.health = HealthKeeper(store, world.fleet, state_dir=state_dir, by="test")
    world.transport.outcomes.update({"a": (RunStatus.ERROR, None), "b": (RunStatus.ERROR, None)})
    scheduler.step("b1", world.clock.now())
    world.transport.finish_running()

    assert scheduler.step("b1", world.clock.advance(1)).dispatched == []
    assert sorted(store.quarantined()) == ["m1", "m2"]
    context = FleetContext(
        fleet=world.fleet,
        held=world.runs.held(),
        now=world.clock.now(),
        quarantined=store.quarantined(),
    )
    code, reason = reasons_of(world, "b1", context)["c"]
    assert code == "quarantined"
    assert reason.startswith(
        "every machine matching tag:local that is in service is quarantined "
        "(m1: a run ended with an infrastructure error (error)"
    )
    assert "next health check at" in reason
