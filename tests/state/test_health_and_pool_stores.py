"""health.json and pools.json as several workers share them: each worker
has its own store on the same state directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchctl.model.errors import StateUnreadable
from batchctl.model.fleet import Fleet, Machine
from batchctl.model.health import EndedRun, HealthSpec
from batchctl.model.pools import Address, PoolSpec
from batchctl.state.health import HealthStore
from batchctl.state.pools import PoolStore, with_pool_machines

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FLEET = Fleet(
    machines=(Machine(name="m1", tags=("t",)), Machine(name="m2", tags=("t",))),
    source="t",
    health=HealthSpec(failures=2, check_every=5),
)


def failure(item: str, machine: str = "m1") -> EndedRun:
    return EndedRun(
        machine=machine,
        batch="b",
        item=item,
        run=f"r-{item}",
        status="error",
        error_code="ssh_connect",
        at=NOW,
    )


def test_failures_counted_by_two_workers_add_up_and_a_restarted_reader_sees_the_quarantine(
    state_dir: Path,
) -> None:
    one, two = HealthStore(state_dir), HealthStore(state_dir)
    assert one.record_ends([failure("a")], FLEET, NOW) == []
    assert two.record_ends([failure("b")], FLEET, NOW) == ["m1"]

    later = HealthStore(state_dir)  # a worker started afterwards
    quarantine = later.quarantined()["m1"]
    assert quarantine.next_check_at == NOW + timedelta(seconds=5)


def test_one_worker_runs_a_due_check_and_only_it_may_record_it(state_dir: Path) -> None:
    one, two = HealthStore(state_dir), HealthStore(state_dir)
    one.record_ends([failure("a"), failure("b")], FLEET, NOW)
    due = NOW + timedelta(seconds=5)

    assert one.claim_check("m1", by="w1", now=NOW, hold_s=60) is None  # not due yet
    assert one.claim_check("m1", by="w1", now=due, hold_s=60) is not None
    assert two.claim_check("m1", by="w2", now=due, hold_s=60) is None
    assert not two.checked("m1", by="w2", passed=True, detail="", fleet=FLEET, now=due)
    assert one.checked("m1", by="w1", passed=False, detail="exit 1", fleet=FLEET, now=due)
    # The claim of a worker that died runs out; another takes the next check.
    later = due + timedelta(seconds=120)
    assert two.claim_check("m1", by="w2", now=later, hold_s=60) is not None
    assert two.checked("m1", by="w2", passed=True, detail="", fleet=FLEET, now=later)
    assert HealthStore(state_dir).health() == {}


def test_a_good_end_on_a_healthy_machine_writes_nothing(state_dir: Path) -> None:
    store = HealthStore(state_dir)
    passed = EndedRun(
        machine="m1", batch="b", item="a", run="r", status="succeeded", error_code=None, at=NOW
    )
    assert store.record_ends([passed], FLEET, NOW) == []
    assert not store.path.exists()


def test_a_damaged_health_file_is_refused_and_left_as_it_is(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "health.json").write_text('{"schema_version": 1, "machines": {"m1": 3}}')
    with pytest.raises(StateUnreadable, match="machine 'm1' is damaged"):
        HealthStore(state_dir).health()
    assert (state_dir / "health.json").read_text() == '{"schema_version": 1, "machines": {"m1": 3}}'


POOL = PoolSpec(name="cloud", tags=("t",), max=3, provision="up", deprovision="down")


def test_concurrent_demand_of_two_workers_shares_the_requests(state_dir: Path) -> None:
    one, two = PoolStore(state_dir), PoolStore(state_dir)
    assert one.request(POOL, demand=2, by="w1", now=NOW, hold_s=60) == ["cloud-1", "cloud-2"]
    # The other worker saw the same two waiting items: they are provided for.
    assert two.request(POOL, demand=2, by="w2", now=NOW, hold_s=60) == []
    assert two.request(POOL, demand=9, by="w2", now=NOW, hold_s=60) == ["cloud-3"]  # max 3


def test_a_capacity_error_backs_off_and_a_ready_machine_joins_the_fleet(state_dir: Path) -> None:
    store = PoolStore(state_dir)
    [name] = store.request(POOL, demand=1, by="w1", now=NOW, hold_s=60)
    store.provision_failed(POOL, name, capacity=True, note="no capacity", now=NOW)
    assert store.request(POOL, demand=1, by="w1", now=NOW + timedelta(seconds=1), hold_s=60) == []
    [again] = store.request(POOL, demand=1, by="w1", now=NOW + timedelta(seconds=5), hold_s=60)
    assert again == "cloud-2"
    store.provisioned("cloud", again, Address(host="10.0.0.7", port=2222), now=NOW)
    fleet = Fleet(machines=(), source="t", pools=(POOL,))
    assert with_pool_machines(fleet, store.pools()).machines == ()  # not healthy yet
    store.ready("cloud", again, now=NOW)
    [machine] = with_pool_machines(fleet, PoolStore(state_dir).pools()).machines
    assert (machine.name, machine.host, machine.port, machine.tags) == (
        "cloud-2",
        "10.0.0.7",
        2222,
        ("t",),
    )
    assert store.pools()["cloud"].failed_total == 0  # capacity errors are no failures


def test_a_late_health_check_or_provision_does_not_bring_back_a_machine_given_up(
    state_dir: Path,
) -> None:
    store = PoolStore(state_dir)
    [name] = store.request(POOL, demand=1, by="w1", now=NOW, hold_s=60)
    assert store.ready("cloud", name, now=NOW) is False  # not provisioned yet
    assert store.pools()["cloud"].machines[name].state == "provisioning"
    assert store.provisioned("cloud", name, Address(host="10.0.0.7"), now=NOW) is True
    # Its ready_timeout ran out: it is being deprovisioned when its check passes.
    assert store.deprovisioning("cloud", name, by="w1", now=NOW, hold_s=60, note="never ready")
    assert store.ready("cloud", name, now=NOW) is False
    assert store.provisioned("cloud", name, Address(host="10.0.0.8"), now=NOW) is False
    machine = PoolStore(state_dir).pools()["cloud"].machines[name]
    assert (machine.state, machine.address) == ("deprovisioning", Address(host="10.0.0.7"))
    fleet = Fleet(machines=(), source="t", pools=(POOL,))
    assert with_pool_machines(fleet, store.pools()).machines == ()


def test_a_pool_machine_whose_name_the_fleet_has_already_is_left_out_and_said_so(
    state_dir: Path,
) -> None:
    store = PoolStore(state_dir)
    for name in store.request(POOL, demand=2, by="w1", now=NOW, hold_s=60):
        store.provisioned("cloud", name, Address(host=f"h-{name}"), now=NOW)
        store.ready("cloud", name, now=NOW)
    # An inventory's machine took the name (a file's is refused on reading).
    fleet = Fleet(
        machines=(Machine(name="cloud-1", tags=("t",), source="inventory:http"),),
        source="t",
        pools=(POOL,),
    )
    warnings: list[str] = []

    merged = with_pool_machines(fleet, store.pools(), warnings.append)

    assert [(m.name, m.source) for m in merged.machines] == [
        ("cloud-1", "inventory:http"),
        ("cloud-2", "pool cloud"),
    ]
    assert warnings == [
        "pool cloud's machine cloud-1 left out of the fleet: another machine has that name"
    ]
