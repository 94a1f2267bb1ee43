"""The durations file: a moving average per item and content, bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchctl.model.errors import StateUnreadable
from batchctl.state.durations import DurationStore

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def test_a_new_duration_weighs_half_against_what_was_known(state_dir: Path) -> None:
    store = DurationStore(state_dir)
    store.record({"k": 10.0}, NOW)
    store.record({"k": 20.0, "other": 1.0}, NOW)
    assert store.expected() == {"k": 15.0, "other": 1.0}
    assert store.expected({"other", "missing"}) == {"other": 1.0}


def test_past_the_bound_the_entries_seen_longest_ago_go(state_dir: Path) -> None:
    store = DurationStore(state_dir, max_entries=3)
    for n in range(3):
        store.record({f"k{n}": float(n)}, NOW + timedelta(seconds=n))
    store.record({"k0": 0.0}, NOW + timedelta(seconds=10))  # seen again: kept
    store.record({"k3": 3.0, "k4": 4.0}, NOW + timedelta(seconds=20))
    assert set(store.expected()) == {"k0", "k3", "k4"}


def test_a_damaged_file_is_refused_and_left_as_it_is(state_dir: Path) -> None:
    store = DurationStore(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    store.file.path.write_text("[1, 2")
    with pytest.raises(StateUnreadable, match=r"durations\.json"):
        store.expected()
    with pytest.raises(StateUnreadable):
        store.record({"k": 1.0}, NOW)
    assert store.file.path.read_text() == "[1, 2"


def test_adding_a_few_durations_writes_what_they_take_not_the_whole_file(
    state_dir: Path,
) -> None:
    store = DurationStore(state_dir)
    store.record({f"k{n}": float(n) for n in range(5_000)}, NOW)
    snapshot = store.file.path
    before = store.file.bytes_written
    store.record({"k7": 9.0}, NOW + timedelta(seconds=1))
    assert store.file.bytes_written - before < 200
    # Another process folds the journal into what it reads, in the order
    # the durations were seen: k7 moved to the end.
    again = DurationStore(state_dir)
    expected = again.expected()
    assert expected["k7"] == 8.0
    assert list(expected)[-1] == "k7"
    assert len(expected) == 5_000
    # Compacted once the journal has grown: the same durations, from the snapshot.
    with store.file.locked():
        store.file.compact()
    assert snapshot.exists()
    assert DurationStore(state_dir).expected() == expected
