"""The health policy alone: what counts against a machine, when it is
quarantined, when it is checked again, and the valve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batchctl.model.health import (
    EndedRun,
    HealthSpec,
    MachineGroups,
    MachineHealth,
    after_check,
    after_end,
    allowed_out,
    check_delay,
    needs_probe,
    quarantine_due,
    quarantined,
    valve_holds,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def end(
    item: str, status: str = "error", code: str | None = "ssh_connect", run: str = ""
) -> EndedRun:
    return EndedRun(
        machine="m1",
        batch="b1",
        item=item,
        run=run or f"r-{item}-{status}",
        status=status,
        error_code=code,
        at=NOW,
    )


def health_after(*ends: EndedRun) -> MachineHealth:
    health = MachineHealth()
    for one in ends:
        health = after_end(health, one)
    return health


def test_consecutive_infrastructure_failures_of_different_items_reach_the_threshold() -> None:
    spec = HealthSpec(failures=3)
    two = health_after(end("a"), end("b", "interrupted", "ssh_connection_lost"))
    assert not quarantine_due(two, spec)
    assert quarantine_due(after_end(two, end("c", code="upload_failed")), spec)


def test_the_same_item_failing_again_is_not_counted_twice() -> None:
    spec = HealthSpec(failures=2)
    health = health_after(end("a", run="r1"), end("a", run="r2"), end("a", run="r3"))
    assert len(health.streak) == 1
    assert not quarantine_due(health, spec)


def test_a_good_end_or_a_failed_test_breaks_the_streak_but_other_interruptions_do_not_count() -> (
    None
):
    assert health_after(end("a"), end("b", "succeeded", None)).empty
    assert health_after(end("a"), end("b", "failed", None)).empty
    # Interrupted for another reason (a cancel, a lost executor) is not the machine's fault.
    assert health_after(end("a"), end("b", "interrupted", None)).empty


def test_a_quarantined_machine_is_judged_by_its_health_check_alone() -> None:
    spec = HealthSpec(failures=1, check_every=5, check_every_max=30)
    out = quarantined(health_after(end("a")), spec, NOW)
    assert out.quarantine is not None
    assert out.quarantine.next_check_at == NOW + timedelta(seconds=5)
    assert "ssh_connect" in out.quarantine.reason
    assert after_end(out, end("z", "succeeded", None)) == out

    failed = after_check(out, spec, passed=False, detail="exit 255", now=NOW)
    assert failed.quarantine is not None
    assert (failed.quarantine.checks, failed.quarantine.last_check) == (1, "exit 255")
    assert failed.quarantine.next_check_at == NOW + timedelta(seconds=5)
    assert after_check(failed, spec, passed=True, detail="ok", now=NOW).empty


def test_only_a_run_that_never_reached_its_machine_has_the_machine_probed() -> None:
    assert needs_probe("error", "ssh_connect")
    assert needs_probe("error", "ssh_auth")
    assert not needs_probe("error", "upload_failed")  # it was reached
    assert not needs_probe("interrupted", "ssh_connection_lost")
    assert not needs_probe("failed", None)


def test_checks_back_off_doubling_up_to_the_cap() -> None:
    spec = HealthSpec(check_every=5, check_every_max=30)
    assert [check_delay(n, spec) for n in range(1, 7)] == [5, 10, 20, 30, 30, 30]


def test_the_valve_counts_the_fleet_and_every_tag_shared_by_several_machines() -> None:
    spec = HealthSpec(max_quarantined=0.5)
    groups = MachineGroups.of(
        [("g1", ["gpu"]), ("g2", ["gpu"]), ("c1", ["cpu"]), ("c2", ["cpu"]), ("solo", ["odd"])]
    )
    assert allowed_out(5, spec) == 2
    assert valve_holds("g1", ["gpu"], {}, groups, spec) is None
    held = valve_holds("g2", ["gpu"], {"g1": True}, groups, spec)
    assert held == (
        "not quarantined: 1 of the 2 machines of tag gpu already are (max_quarantined 0.5 allows 1)"
    )
    # A tag only one machine has is no group; the fleet still counts.
    assert valve_holds("solo", ["odd"], {"g1": True}, groups, spec) is None
    held = valve_holds("solo", ["odd"], {"g1": True, "c1": True}, groups, spec)
    assert held is not None
    assert "of the fleet" in held


def test_a_fleet_of_one_machine_never_loses_it_at_the_default_fraction() -> None:
    spec = HealthSpec()
    groups = MachineGroups.of([("only", ["local"])])
    assert valve_holds("only", ["local"], {}, groups, spec) is not None
    assert valve_holds("only", ["local"], {}, groups, HealthSpec(max_quarantined=1)) is None
