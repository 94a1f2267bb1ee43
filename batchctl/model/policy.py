"""Pure decisions about items: readiness, finality and outcomes."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from batchctl.model import rules
from batchctl.model.models import Entry, Item, ItemState, Run


def _status(run: Run | None) -> str | None:
    return run.status.value if run is not None else None


def retry_due(entry: Entry, item: Item, run: Run | None) -> bool:
    """A dispatched attempt whose run ended in a status the entry retries on,
    with attempts left."""
    return rules.retry_due(
        item.state.value, _status(run), entry.retry_on, item.attempt, entry.retries
    )


def item_passed(item: Item, run: Run | None) -> bool:
    return rules.passed(item.state.value, _status(run))


def item_is_final(entry: Entry, item: Item, run: Run | None, *, cancelled: bool = False) -> bool:
    """See ``rules.final``."""
    return rules.final(
        item.state.value,
        _status(run),
        due_for_retry=retry_due(entry, item, run),
        cancelled=cancelled,
    )


def unmet_needs(entry: Entry, items: Mapping[str, Item], runs: Mapping[str, Run]) -> list[str]:
    """The needed items that have not passed yet, in the order the entry lists them."""
    return [
        needed
        for needed in entry.needs
        if not item_passed(items[needed], runs.get(items[needed].run_id or ""))
    ]


@dataclass(frozen=True)
class Backoff:
    """Delay before a retry: ``base_s * 2**(failed attempts - 1)``, capped at
    ``cap_s``, with equal jitter (half of it fixed, half random) so retries of
    many items spread out instead of hitting the fleet at the same instant."""

    base_s: float = 5.0
    cap_s: float = 300.0


def retry_delay(
    failed_attempt: int, backoff: Backoff, uniform: Callable[[float, float], float]
) -> float:
    ceiling = min(backoff.cap_s, backoff.base_s * 2.0 ** max(failed_attempt - 1, 0))
    return ceiling / 2 + uniform(0.0, ceiling / 2)


def ready_since(
    entry: Entry, item: Item, items: Mapping[str, Item], runs: Mapping[str, Run]
) -> datetime | None:
    """When a queued item became ready to dispatch — its needs all passed and
    its retry backoff over — derived from stored times, so it needs no write
    of its own. None while it is not ready."""
    if item.state is not ItemState.QUEUED or unmet_needs(entry, items, runs):
        return None
    moments = [moment for moment in (item.updated_at, item.not_before) if moment is not None]
    for needed in entry.needs:
        run = runs.get(items[needed].run_id or "")
        if run is not None and run.ended_at is not None:
            moments.append(run.ended_at)
    return max(moments) if moments else None


def prefer_fresh_machines(candidates: Sequence[str], failed_on: Collection[str]) -> list[str]:
    """Machines the item has not failed on first; the others stay as a fallback."""
    return [m for m in candidates if m not in failed_on] + [m for m in candidates if m in failed_on]
