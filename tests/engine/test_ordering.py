"""Fair turns between batches and the critical path of a batch: pure functions."""

from __future__ import annotations

import pytest

from batchctl.model.ordering import (
    UNKNOWN_DURATION_S,
    Contender,
    FairTurns,
    Remaining,
    critical_path,
    expected_durations,
    time_left,
)


def hand_out(turns: FairTurns, slots: int, can_use: set[str] | None = None) -> list[str]:
    given: list[str] = []
    while len(given) < slots and (turn := turns.next()) is not None:
        if can_use is not None and turn.batch_id not in can_use:
            turns.passed()
            continue
        given.append(turn.batch_id)
        turns.took()
    return given


def test_equal_priorities_take_turns_from_what_they_hold() -> None:
    turns = FairTurns(
        [Contender("big", held=4, weight=1, age=0, wants=100), Contender("small", 0, 1, 1, 10)]
    )
    # small catches up with what big holds, then they alternate, older first.
    assert hand_out(turns, 8) == ["small"] * 4 + ["big", "small", "big", "small"]


def test_weights_share_slots_in_proportion() -> None:
    turns = FairTurns([Contender("low", 0, 1, 0, 100), Contender("high", 0, 3, 1, 100)])
    given = hand_out(turns, 40)
    assert given.count("high") == 30
    assert given.count("low") == 10


def test_a_batch_that_wants_no_more_leaves_its_turns_to_others() -> None:
    turns = FairTurns([Contender("a", 0, 1, 0, 2), Contender("b", 0, 1, 1, 100)])
    assert hand_out(turns, 6) == ["a", "b", "a", "b", "b", "b"]


def test_a_batch_no_free_slot_fits_is_passed_over() -> None:
    turns = FairTurns([Contender("a", 0, 1, 0, 5), Contender("b", 0, 1, 1, 5)])
    assert hand_out(turns, 3, can_use={"b"}) == ["b", "b", "b"]


def test_the_critical_path_is_the_longest_chain_of_expected_durations() -> None:
    order = ["build", "unit", "slow", "package", "lint"]
    needs = {"unit": ["build"], "slow": ["build"], "package": ["unit", "slow"]}
    expected = {"build": 2.0, "unit": 1.0, "slow": 10.0, "package": 3.0, "lint": 5.0}
    chain = critical_path(order, needs, expected)
    assert chain == {"build": 15.0, "unit": 4.0, "slow": 13.0, "package": 3.0, "lint": 5.0}


def test_a_long_chain_of_short_items_outranks_one_long_item() -> None:
    order = [f"c{n}" for n in range(10)] + ["long"]
    needs = {f"c{n}": [f"c{n - 1}"] for n in range(1, 10)}
    chain = critical_path(order, needs, dict.fromkeys(order, 1.0) | {"long": 5.0})
    assert chain["c0"] == 10.0
    assert chain["c0"] > chain["long"] > chain["c9"]


def test_unknown_durations_default_to_the_median_of_those_known() -> None:
    expected, default = expected_durations(["a", "b", "c", "d"], {"a": 1.0, "b": 3.0, "c": 8.0})
    assert default == 3.0
    assert expected == {"a": 1.0, "b": 3.0, "c": 8.0, "d": 3.0}
    nothing, fallback = expected_durations(["a"], {})
    assert nothing == {"a": UNKNOWN_DURATION_S}
    assert fallback == UNKNOWN_DURATION_S


@pytest.mark.parametrize("size", [1, 1000])
def test_a_diamond_counts_the_shared_tail_once_per_path(size: int) -> None:
    order = ["top", *(f"mid{n}" for n in range(size)), "bottom"]
    needs = {f"mid{n}": ["top"] for n in range(size)} | {"bottom": [f"mid{n}" for n in range(size)]}
    chain = critical_path(order, needs, dict.fromkeys(order, 1.0))
    assert chain["top"] == 3.0
    assert chain["bottom"] == 1.0


def test_time_left_is_the_longer_of_the_chain_and_the_work_in_flight() -> None:
    left = time_left(
        [
            Remaining("build", (), running_for=0.0),  # dispatched, not started yet
            Remaining("test", ("build",)),
            Remaining("lint", (), running_for=4.0),
        ],
        {"build": 10.0, "test": 20.0, "lint": 5.0},
    )
    # build then test (30 s) outlasts the work over 2 runs in flight ((10 + 20 + 1) / 2).
    assert left == 30.0
    many = [Remaining(f"t{n}", (), running_for=None) for n in range(10)]
    # Ten queued 10 s items and nothing in flight: counted one at a time.
    assert time_left(many, {"t0": 10.0}) == 100.0
    assert time_left(many, {}) is None
    assert time_left([], {"t0": 10.0}) == 0.0
