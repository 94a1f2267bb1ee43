"""The rules that decide an item's outcome and whether anything more will
happen to it, stated once on the plain values stored records carry (state and
status names). The typed policy (``policy``) and the view built straight from
stored records (``viewdoc``) both ask these, so they cannot disagree.

Standard library only: ``status --json`` answers from here without importing
the models.
"""

from __future__ import annotations

from collections.abc import Collection

QUEUED = "queued"
DISPATCHED = "dispatched"
SKIPPED = "skipped"
SUCCEEDED = "succeeded"

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "error", "timeout", "interrupted"})

# A run's status only moves up this order; terminal statuses share the top.
RUN_STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "running": 1,
    **dict.fromkeys(TERMINAL_STATUSES, 2),
}

# What an item's latest run status means for the item.
RUN_OUTCOME: dict[str, str] = {
    "pending": "running",
    "running": "running",
    "succeeded": "passed",
    "failed": "failed",
    "error": "error",
    "timeout": "timeout",
    "interrupted": "interrupted",
}

# A batch skips items no machine took within this long, unless told otherwise.
DEFAULT_QUEUE_TIMEOUT_S = 86_400


def retry_due(
    state: str, status: str | None, retry_on: Collection[str], attempt: int, retries: int
) -> bool:
    """A dispatched attempt whose run ended in a status the entry retries on,
    with attempts left."""
    return (
        state == DISPATCHED
        and status in TERMINAL_STATUSES
        and status in retry_on
        and attempt <= retries
    )


def passed(state: str, status: str | None) -> bool:
    return state == DISPATCHED and status == SUCCEEDED


def final(state: str, status: str | None, *, due_for_retry: bool, cancelled: bool) -> bool:
    """Nothing more will happen to this item: skipped, or its run ended and no
    retry follows (a cancelled batch retries nothing). ``status`` is None when
    a dispatched item's run record is gone (runs.json deleted or pruned by
    hand): final too, nobody will ever record that run's end."""
    if state == SKIPPED:
        return True
    if state == QUEUED:
        return False
    if status is None:
        return True
    if status not in TERMINAL_STATUSES:
        return False
    return cancelled or not due_for_retry


def outcome(state: str, status: str | None, *, waiting: bool) -> str:
    """What `status` shows for an item; ``waiting``: a need has not passed."""
    if state == SKIPPED:
        return "skipped"
    if state == QUEUED:
        return "waiting" if waiting else "queued"
    return RUN_OUTCOME[status] if status is not None else "interrupted"
