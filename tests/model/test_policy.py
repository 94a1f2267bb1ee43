"""Pure decisions: backoff, readiness, machine preference, and the reasons
`status` gives for a queued item."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchctl.model.fleet import Fleet, Machine
from batchctl.model.models import Batch, Entry, Item, ItemState, Run, RunStatus
from batchctl.model.policy import Backoff, prefer_fresh_machines, ready_since, retry_delay
from batchctl.model.views import FleetContext
from tests.fakes import batch_view

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("failed_attempt", "low", "high"),
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (7, 30.0, 60.0), (20, 30.0, 60.0)],
)
def test_backoff_doubles_per_attempt_up_to_the_cap_with_bounded_jitter(
    failed_attempt: int, low: float, high: float
) -> None:
    backoff = Backoff(base_s=5, cap_s=60)
    assert retry_delay(failed_attempt, backoff, lambda a, b: a) == low
    assert retry_delay(failed_attempt, backoff, lambda a, b: b) == high


def entry(name: str, needs: tuple[str, ...] = (), selector: str = "tag:linux") -> Entry:
    return Entry(
        name=name,
        dir=name,
        abs_dir=f"/x/{name}",
        selector=selector,
        needs=needs,
        timeout_s=60,
        retries=0,
        retry_on=("error",),
    )


def run(run_id: str, item: str, status: RunStatus, ended: datetime | None = None) -> Run:
    return Run(
        id=run_id,
        batch_id="b",
        item=item,
        attempt=1,
        machine="m1",
        test_dir="/x",
        test_dir_hash="h",
        status=status,
        created_at=NOW,
        ended_at=ended,
        log_path="/l",
        artifacts_path="/a",
    )


def test_ready_since_is_when_the_last_need_passed() -> None:
    items = {
        "a": Item(name="a", state=ItemState.DISPATCHED, run_id="ra"),
        "b": Item(name="b", state=ItemState.DISPATCHED, run_id="rb"),
        "c": Item(name="c", updated_at=NOW),
    }
    later = NOW + timedelta(minutes=3)
    runs = {
        "ra": run("ra", "a", RunStatus.SUCCEEDED, NOW + timedelta(minutes=1)),
        "rb": run("rb", "b", RunStatus.SUCCEEDED, later),
    }
    assert ready_since(entry("c", ("a", "b")), items["c"], items, runs) == later
    running = {**runs, "rb": run("rb", "b", RunStatus.RUNNING)}
    assert ready_since(entry("c", ("a", "b")), items["c"], items, running) is None


def test_machines_an_item_failed_on_go_last() -> None:
    assert prefer_fresh_machines(["m1", "m2", "m3"], {"m1"}) == ["m2", "m3", "m1"]
    assert prefer_fresh_machines(["m1"], {"m1"}) == ["m1"]


def reasons(
    batch: Batch, runs: dict[str, Run], fleet: Fleet, held: dict[str, int]
) -> dict[str, str | None]:
    view = batch_view(batch, runs, FleetContext(fleet=fleet, held=held, now=NOW))
    return {item.name: item.reason for item in view.items}


def test_reasons_explain_why_an_item_waits() -> None:
    entries = (
        entry("build"),
        entry("test", ("build",)),
        entry("gpu", selector="tag:gpu"),
        entry("pinned", selector="machine:m1"),
        entry("nowhere", selector="tag:arm"),
        entry("backoff"),
        entry("free", selector="tag:spare"),
    )
    items = {e.name: Item(name=e.name) for e in entries}
    items["build"] = Item(name="build", state=ItemState.DISPATCHED, run_id="r1", machine="m1")
    items["backoff"] = Item(name="backoff", attempt=2, not_before=NOW + timedelta(seconds=30))
    batch = Batch(
        id="b",
        plan_hash="h",
        staging="s",
        created_by="u@h",
        created_at=NOW,
        expected_count=len(entries),
        source="inline",
        entries=entries,
        items=items,
    )
    fleet = Fleet(
        machines=(
            Machine(name="m1", tags=("linux",), slots=1),
            Machine(name="g1", tags=("gpu",), slots=1),
            Machine(name="g2", tags=("gpu",), slots=2),
            Machine(name="s1", tags=("spare",), slots=1),
        ),
        source="t",
    )

    explained = reasons(
        batch, {"r1": run("r1", "build", RunStatus.RUNNING)}, fleet, {"m1": 1, "g1": 1, "g2": 2}
    )

    assert explained == {
        "build": None,
        "test": "waiting on build (running)",
        "gpu": "all 2 machines with tag gpu busy",
        "pinned": "machine m1 busy",
        "nowhere": "no machine matches tag:arm",
        "backoff": "retry backoff until 2026-11-22T05:00:30Z",
        "free": "ready; dispatching on the next tick",
    }


@pytest.mark.parametrize(
    ("status", "attempt", "retry_on", "due"),
    [
        (RunStatus.ERROR, 1, ("error",), True),
        (RunStatus.FAILED, 1, ("error", "timeout", "interrupted"), False),
        (RunStatus.FAILED, 1, ("failed",), True),
        (RunStatus.TIMEOUT, 2, ("timeout",), True),
        (RunStatus.TIMEOUT, 3, ("timeout",), False),  # retries: 2 -> attempts 1..3
        (RunStatus.SUCCEEDED, 1, ("error", "failed"), False),
        (RunStatus.RUNNING, 1, ("error",), False),
    ],
)
def test_retry_is_due_only_for_listed_statuses_with_attempts_left(
    status: RunStatus, attempt: int, retry_on: tuple[str, ...], due: bool
) -> None:
    from batchctl.model.policy import item_is_final, retry_due

    retried = entry("a").model_copy(update={"retries": 2, "retry_on": retry_on})
    item = Item(name="a", state=ItemState.DISPATCHED, attempt=attempt, run_id="r")
    the_run = run("r", "a", status)
    assert retry_due(retried, item, the_run) is due
    assert item_is_final(retried, item, the_run) is (status.terminal and not due)
    # A cancelled batch retries nothing: a finished run is final there.
    assert item_is_final(retried, item, the_run, cancelled=True) is status.terminal
