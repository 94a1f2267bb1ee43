"""The live table `run --wait` and `status --wait` show on a terminal.

It fits the screen whatever the batch's size: running items first, then
those that did not pass, then the rest, as many as there are lines for; what
does not fit is summarised in one line by outcome. Its title has the counts,
the time since the batch was made, and an estimate of the time left from
how long the same items (same name, same content) took before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime

from rich.console import Group
from rich.text import Text

from batchctl.cli.render import batch_table, counts_line, duration
from batchctl.model.ordering import Remaining, time_left
from batchctl.model.views import BatchView, ItemView

RUNNING = ("running",)
NOT_PASSED = ("failed", "error", "timeout", "interrupted")
FINAL = ("passed", "skipped", *NOT_PASSED)
# Title, header, the summary line, and one line of slack for the cursor.
RESERVED_LINES = 4


def _rank(item: ItemView) -> int:
    if item.outcome in RUNNING:
        return 0
    if item.outcome in NOT_PASSED:
        return 1
    if item.outcome in ("queued", "waiting"):
        return 2
    return 3


def remaining_s(view: BatchView, now: datetime, expected: Mapping[str, float]) -> float | None:
    """Seconds left if the items not yet final take what they took before
    (``ordering.time_left``: the longest chain left, or the work left over
    the runs in flight); None without any earlier figure. O(items + needs)."""
    return time_left(
        (
            Remaining(
                item.name,
                item.needs,
                _running_for(item, now),
            )
            for item in view.items
            if item.outcome not in FINAL
        ),
        expected,
    )


def _running_for(item: ItemView, now: datetime) -> float | None:
    """How long the item's run has run; 0 for one not started yet (pending:
    in flight all the same); None if it is not in flight."""
    if item.outcome not in RUNNING:
        return None
    started = item.run.started_at if item.run else None
    return max(0.0, (now - started).total_seconds()) if started else 0.0


def live_table(
    view: BatchView, *, height: int, now: datetime, expected: Mapping[str, float]
) -> Group:
    """The batch as a table of at most ``height`` lines."""
    elapsed = duration(max(0.0, (now - view.created_at).total_seconds()))
    title = f"batch {view.id}: {counts_line(view.counts)} · {elapsed} elapsed"
    if not view.done:
        left = remaining_s(view, now, expected)
        title += f" · about {duration(left)} left" if left is not None else ""
    room = max(1, height - RESERVED_LINES)
    ordered = sorted(view.items, key=_rank)  # stable: authored order within a rank
    shown, hidden = ordered[:room], ordered[room:]
    if hidden:
        # One line fewer for the rows, one for what they leave out.
        shown, hidden = ordered[: room - 1], ordered[room - 1 :]
    table = batch_table(view.model_copy(update={"items": shown}), fold_detail=False)
    if hidden:
        left_out = Counter(item.outcome for item in hidden)
        table.add_row(
            Text(f"… {len(hidden)} more", style="dim"),
            Text(counts_line(dict(left_out)), style="dim"),
        )
    # The title on a line of its own, cut rather than wrapped: a table's
    # title wraps at the table's width and would take lines the rows need.
    return Group(Text(title, no_wrap=True, overflow="ellipsis"), table)
