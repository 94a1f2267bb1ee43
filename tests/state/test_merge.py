"""The per-item merge on its own: monotonic, first decision wins, retries order."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batchctl.model.models import Item, ItemState, SkipCode
from batchctl.state import merge
from batchctl.state.folds import fold_batches


def stored(item: Item) -> dict[str, Any]:
    """As the journal stores it: defaults left out."""
    return item.model_dump(mode="json", exclude_defaults=True)


def merge_item(kept: Item, proposed: Item) -> Item:
    return Item.model_validate(merge.merge_item(stored(kept), stored(proposed)))


def item_version(item: Item) -> tuple[int, int]:
    return merge.item_version(stored(item))


QUEUED = Item(name="a")
DISPATCHED = Item(name="a", state=ItemState.DISPATCHED, run_id="r1", machine="m1")
SKIPPED = Item(name="a", state=ItemState.SKIPPED, error_code=SkipCode.CANCELLED)
RETRY_QUEUED = Item(name="a", attempt=2, history=("r1",))


def test_dispatch_beats_queued_in_either_order() -> None:
    assert merge_item(QUEUED, DISPATCHED) == DISPATCHED
    assert merge_item(DISPATCHED, QUEUED) == DISPATCHED


def test_first_decision_about_an_attempt_wins() -> None:
    other_dispatch = DISPATCHED.model_copy(update={"run_id": "r2", "machine": "m2"})
    assert merge_item(DISPATCHED, other_dispatch) == DISPATCHED
    assert merge_item(DISPATCHED, SKIPPED) == DISPATCHED
    assert merge_item(SKIPPED, DISPATCHED) == SKIPPED


def test_a_retry_attempt_outranks_the_earlier_dispatch() -> None:
    assert merge_item(DISPATCHED, RETRY_QUEUED) == RETRY_QUEUED
    # ...and a stale writer holding attempt 1 cannot pull it back.
    assert merge_item(RETRY_QUEUED, DISPATCHED) == RETRY_QUEUED
    assert merge_item(RETRY_QUEUED, QUEUED) == RETRY_QUEUED


def test_unknown_names_are_ignored_and_missing_ones_kept() -> None:
    batch = {"id": "b1", "items": {"a": stored(QUEUED), "b": stored(Item(name="b"))}}
    document: dict[str, Any] = {"batches": {"b1": batch}}
    proposed = {"a": stored(DISPATCHED), "zzz": stored(Item(name="zzz"))}
    fold_batches(document, {"op": "items", "batch": "b1", "items": proposed})
    assert batch["items"] == {"a": stored(DISPATCHED), "b": stored(Item(name="b"))}


items = st.builds(
    Item,
    name=st.just("a"),
    state=st.sampled_from(list(ItemState)),
    attempt=st.integers(min_value=1, max_value=4),
    run_id=st.sampled_from([None, "r1", "r2"]),
)


@given(items, items)
def test_merge_never_moves_backwards(kept: Item, proposed: Item) -> None:
    merged = merge_item(kept, proposed)
    assert item_version(merged) >= item_version(kept)
    assert item_version(merged) >= item_version(proposed)
    assert merged in (kept, proposed)


@given(st.lists(items, min_size=1, max_size=6))
def test_any_order_of_writes_ends_at_the_highest_version(writes: list[Item]) -> None:
    state = writes[0]
    for proposed in writes[1:]:
        state = merge_item(state, proposed)
    assert item_version(state) == max(item_version(item) for item in writes)
