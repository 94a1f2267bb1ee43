"""The per-item monotonic merge of batch records (SPEC §3, §5). Pure functions
on stored items, so the journal folds without building a model per record.

An item's version is ``(attempt, state rank)`` with queued < dispatched/skipped.
Merging keeps the higher version, and on a tie keeps what is already stored:
a writer holding an older snapshot can neither move an item backwards nor
overwrite a decision someone else made first (two writers both deciding about
attempt 1 of a queued item: the first one to reach the file wins).
"""

from __future__ import annotations

from collections.abc import Mapping

STATE_RANK: dict[str, int] = {"queued": 0, "dispatched": 1, "skipped": 1}


def item_version(item: Mapping[str, object]) -> tuple[int, int]:
    """Stored items leave defaults out: attempt 1, state queued."""
    attempt = item.get("attempt", 1)
    assert isinstance(attempt, int)
    return (attempt, STATE_RANK[str(item.get("state", "queued"))])


def merge_item(
    stored: Mapping[str, object], proposed: Mapping[str, object]
) -> Mapping[str, object]:
    return proposed if item_version(proposed) > item_version(stored) else stored
