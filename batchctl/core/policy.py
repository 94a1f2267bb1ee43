"""Pure decisions about items: readiness, finality and outcomes."""

from __future__ import annotations

from collections.abc import Mapping

from batchctl.core.models import Entry, Item, ItemState, Run, RunStatus

RUN_OUTCOME: dict[RunStatus, str] = {
    RunStatus.PENDING: "running",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "passed",
    RunStatus.FAILED: "failed",
    RunStatus.ERROR: "error",
    RunStatus.TIMEOUT: "timeout",
    RunStatus.INTERRUPTED: "interrupted",
}


def retry_due(entry: Entry, item: Item, run: Run | None) -> bool:
    """A dispatched attempt whose run ended in a status the entry retries on,
    with attempts left."""
    return (
        item.state is ItemState.DISPATCHED
        and run is not None
        and run.status.terminal
        and run.status.value in entry.retry_on
        and item.attempt <= entry.retries
    )


def item_passed(item: Item, run: Run | None) -> bool:
    return (
        item.state is ItemState.DISPATCHED and run is not None and run.status is RunStatus.SUCCEEDED
    )


def item_is_final(entry: Entry, item: Item, run: Run | None, *, cancelled: bool = False) -> bool:
    """Nothing more will happen to this item: skipped, or its run ended and no
    retry follows (a cancelled batch retries nothing)."""
    if item.state is ItemState.SKIPPED:
        return True
    if item.state is ItemState.QUEUED:
        return False
    if run is None or not run.status.terminal:
        return False
    return cancelled or not retry_due(entry, item, run)


def unmet_needs(entry: Entry, items: Mapping[str, Item], runs: Mapping[str, Run]) -> list[str]:
    """The needed items that have not passed yet, in the order the entry lists them."""
    return [
        needed
        for needed in entry.needs
        if not item_passed(items[needed], runs.get(items[needed].run_id or ""))
    ]


def item_outcome(
    entry: Entry, item: Item, items: Mapping[str, Item], runs: Mapping[str, Run]
) -> str:
    if item.state is ItemState.SKIPPED:
        return "skipped"
    if item.state is ItemState.QUEUED:
        return "waiting" if unmet_needs(entry, items, runs) else "queued"
    run = runs.get(item.run_id or "")
    return RUN_OUTCOME[run.status] if run is not None else "running"
