"""The scheduler with pool machines: a machine another worker took out for
deprovisioning takes no run, though this scheduler's fleet still lists it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from batchctl.engine.lease import LeaseJudge
from batchctl.engine.pools import PoolKeeper
from batchctl.model.fleet import Fleet, Machine
from batchctl.model.pools import Address, PoolSpec
from batchctl.state.pools import PoolStore
from tests.engine.test_scheduler import World, entries, machines_of, world
from tests.helpers import wait_until

__all__ = ["world"]  # the fixture, used by name

POOL = PoolSpec(name="cloud", tags=("cloud",), max=2, provision="up", deprovision="down")


def test_a_pool_machine_taken_out_by_another_worker_gets_no_run_from_a_stale_fleet(
    world: World, state_dir: Path
) -> None:
    # Another worker's store: both machines come up, then it takes cloud-1 out.
    theirs = PoolStore(state_dir)
    now = world.clock.now()
    for name in theirs.request(POOL, demand=2, by="w1", now=now, hold_s=60):
        assert theirs.provisioned("cloud", name, Address(host="h"), now=now)
        assert theirs.ready("cloud", name, now=now)
    # This scheduler's fleet was resolved while both were ready (a local
    # stand-in for each: the fake transport runs local machines).
    world.fleet = Fleet(
        machines=tuple(
            Machine(name=name, tags=("cloud",), slots=1, source="pool cloud")
            for name in ("cloud-1", "cloud-2")
        ),
        source="t",
        pools=(POOL,),
    )
    world.batch(entries(*(f"{{name: i{n}, dir: suites/ok, tag: cloud}}" for n in range(4))))
    scheduler = world.scheduler()
    scheduler.pools = PoolStore(state_dir)
    assert scheduler.step("b1", world.clock.now()).dispatched == ["i0", "i1"]
    world.transport.finish_running()

    # Taken out under the batches lock by the other worker; this scheduler's
    # fleet is not reloaded.
    later = world.clock.advance(1)
    assert theirs.deprovisioning(
        "cloud", "cloud-1", by="w1", now=later, hold_s=60, note="idle for 2s"
    )
    assert scheduler.step("b1", later).dispatched == ["i2"]
    assert machines_of(world)["i2"] == "cloud-2"
    assert world.runs.held().get("cloud-1", 0) == 0  # i3 waits for a ready machine


def test_the_first_tend_asks_for_a_reload_when_the_ready_machines_differ_from_the_fleet(
    world: World, state_dir: Path
) -> None:
    store = PoolStore(state_dir)
    now = world.clock.now()
    [name] = store.request(POOL, demand=1, by="w1", now=now, hold_s=60)
    store.provisioned("cloud", name, Address(host="h"), now=now)
    # The fleet was resolved before the machine became ready.
    fleet = Fleet(machines=(Machine(name="m1"),), source="t", pools=(POOL,))
    store.ready("cloud", name, now=now)
    keeper = PoolKeeper(
        store,
        lambda: fleet,
        batches=world.batches,
        runs=world.runs,
        judge=LeaseJudge(
            stale_s=30, monotonic=world.clock.monotonic, identity_alive=lambda identity: True
        ),
        state_dir=state_dir,
        by="w2",
        now=now,
    )

    assert keeper.tend(now) is True
    assert keeper.tend(now) is False


def keeper_of(world: World, state_dir: Path, spec: PoolSpec, by: str) -> PoolKeeper:
    fleet = Fleet(machines=(Machine(name="m1"),), source="t", pools=(spec,))
    return PoolKeeper(
        PoolStore(state_dir),
        lambda: fleet,
        batches=world.batches,
        runs=world.runs,
        judge=LeaseJudge(
            stale_s=30, monotonic=world.clock.monotonic, identity_alive=lambda identity: True
        ),
        state_dir=state_dir,
        by=by,
        now=world.clock.now(),
    )


def test_a_machine_whose_worker_died_after_its_provision_printed_it_is_deprovisioned(
    world: World, state_dir: Path
) -> None:
    spec = PoolSpec(name="cloud", tags=("cloud",), max=2, provision="up", deprovision="true")
    store = PoolStore(state_dir)
    now = world.clock.now()
    made, unknown = store.request(spec, demand=2, by="dead", now=now, hold_s=60)
    # The dead worker's provision of the first got as far as printing its address.
    (state_dir / "pools").mkdir()
    (state_dir / "pools" / f"{made}.provision.out").write_text(
        '{"host": "10.0.0.7", "id": "i-1"}\n'
    )
    keeper = keeper_of(world, state_dir, spec, by="w2")

    keeper.tend(world.clock.advance(61))  # the dead worker's claim ran out

    machines = store.pools()["cloud"].machines
    assert unknown not in machines  # nothing says it was made: forgotten
    assert (machines[made].state, machines[made].address) == (
        "deprovisioning",
        Address(host="10.0.0.7", id="i-1"),
    )
    assert (state_dir / "pools" / f"{made}.deprovision.in").read_text() == (
        '{"host": "10.0.0.7", "id": "i-1"}\n'
    )

    def gone() -> bool:
        keeper.tend(world.clock.now())
        return made not in store.pools()["cloud"].machines

    wait_until(gone, what="the deprovision to end")
    assert store.pools()["cloud"].failed_total == 2


def test_a_leaving_keeper_deprovisions_what_it_starts_and_idle_machines_down_to_min(
    world: World, state_dir: Path
) -> None:
    spec = PoolSpec(name="cloud", min=2, max=4, provision="up", deprovision="true")
    store = PoolStore(state_dir)
    now = world.clock.now()
    names = store.request(spec, demand=4, by="w2", now=now, hold_s=600)
    assert names == ["cloud-1", "cloud-2", "cloud-3", "cloud-4"]
    for name in names:
        store.provisioned("cloud", name, Address(host="h"), now=now)
    for name in ("cloud-2", "cloud-3"):
        store.ready("cloud", name, now=now)
    # cloud-4 is starting under another worker's live claim: not this one's to end,
    # and it counts towards min.
    store.take_over("cloud", "cloud-4", by="w9", now=now + timedelta(seconds=601), hold_s=600)
    keeper = keeper_of(world, state_dir, spec, by="w2")

    keeper.leave(now)

    states = {name: m.state for name, m in store.pools()["cloud"].machines.items()}
    assert states == {
        "cloud-1": "deprovisioning",
        "cloud-2": "deprovisioning",
        "cloud-3": "ready",
        "cloud-4": "starting",
    }
    wait_until(lambda: not keeper.wind_down(now), what="the deprovisions to end")
    assert sorted(store.pools()["cloud"].machines) == ["cloud-3", "cloud-4"]
