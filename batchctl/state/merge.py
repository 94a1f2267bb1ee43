"""The per-item monotonic merge of batch records (SPEC §3, §5). Pure functions.

An item's version is ``(attempt, state rank)`` with queued < dispatched/skipped.
Merging keeps the higher version, and on a tie keeps what is already stored:
a writer holding an older snapshot can neither move an item backwards nor
overwrite a decision someone else made first (two writers both deciding about
attempt 1 of a queued item: the first one to reach the file wins).
"""

from __future__ import annotations

from collections.abc import Mapping

from batchctl.model.models import Item, ItemState

STATE_RANK: dict[ItemState, int] = {
    ItemState.QUEUED: 0,
    ItemState.DISPATCHED: 1,
    ItemState.SKIPPED: 1,
}


def item_version(item: Item) -> tuple[int, int]:
    return (item.attempt, STATE_RANK[item.state])


def merge_item(stored: Item, proposed: Item) -> Item:
    return proposed if item_version(proposed) > item_version(stored) else stored


def merge_items(stored: Mapping[str, Item], proposed: Mapping[str, Item]) -> dict[str, Item]:
    """Stored items with each proposed one merged in; names a batch does not
    have are ignored, because the set of items is fixed at creation."""
    return {
        name: merge_item(item, proposed[name]) if name in proposed else item
        for name, item in stored.items()
    }


# The same order on stored (raw JSON) items, so the journal can be folded
# without building a model per record.
RAW_STATE_RANK: dict[str, int] = {state.value: rank for state, rank in STATE_RANK.items()}


def raw_item_version(item: Mapping[str, object]) -> tuple[int, int]:
    """Stored items leave defaults out: attempt 1, state queued."""
    attempt = item.get("attempt", 1)
    assert isinstance(attempt, int)
    return (attempt, RAW_STATE_RANK[str(item.get("state", "queued"))])


def merge_raw_item(
    stored: Mapping[str, object], proposed: Mapping[str, object]
) -> Mapping[str, object]:
    return proposed if raw_item_version(proposed) > raw_item_version(stored) else stored
