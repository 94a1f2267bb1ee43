"""Pure decisions about order: which batch gets the next free slot (fair
sharing), and which ready item of a batch goes first (critical path)."""

from __future__ import annotations

import hashlib
import heapq
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# ``run --priority``: a batch's weight in the fair share.
DEFAULT_PRIORITY = 1
MAX_PRIORITY = 100

# What an item with no history of its own is expected to take when no item
# of the batch has any: every item alike, so the longest chain is the one
# with the most items.
UNKNOWN_DURATION_S = 60.0


@dataclass
class Contender:
    """A batch that wants slots: how many its runs hold now, its weight
    (priority), its place among the batches (oldest first), how many more
    slots it could use, and how many runs it has had so far (for ties)."""

    batch_id: str
    held: int
    weight: int
    age: int
    wants: int
    runs_so_far: int = 0


class FairTurns:
    """Hands out free slots one at a time: the next goes to the contender
    whose share, once it has it, is smallest — ``(held + 1) / weight``. On
    equal shares, to the one that had fewer runs so far per unit of weight
    (so two batches sharing a single slot alternate), then to the older. So
    batches of equal priority take turns until they hold as many slots each
    (round-robin), and a batch of priority 3 holds three slots for every one
    of a batch of priority 1, as long as both want more. O(log contenders)
    per turn."""

    def __init__(self, contenders: Iterable[Contender]) -> None:
        self._heap: list[tuple[float, float, int, int, Contender]] = []
        for index, contender in enumerate(contenders):
            if contender.wants > 0:
                self._push(index, contender)

    def _push(self, index: int, contender: Contender) -> None:
        weight = max(1, contender.weight)
        share = (contender.held + 1) / weight
        had = (contender.runs_so_far + 1) / weight
        heapq.heappush(self._heap, (share, had, contender.age, index, contender))

    def next(self) -> Contender | None:
        """Whose turn it is, or None when nobody wants more."""
        return self._heap[0][-1] if self._heap else None

    def took(self) -> None:
        """The contender whose turn it was took a slot."""
        *_, index, contender = heapq.heappop(self._heap)
        contender.held += 1
        contender.runs_so_far += 1
        contender.wants -= 1
        if contender.wants > 0:
            self._push(index, contender)

    def passed(self) -> None:
        """The contender whose turn it was can use no free slot: it is out."""
        heapq.heappop(self._heap)


def expected_durations(
    names: Iterable[str], known: Mapping[str, float]
) -> tuple[dict[str, float], float]:
    """Each item's expected seconds: its own history, else the median of the
    batch's known figures (``UNKNOWN_DURATION_S`` when none is known). The
    default is returned too. O(items + known log known)."""
    figures = [seconds for seconds in known.values() if seconds >= 0]
    default = statistics.median(figures) if figures else UNKNOWN_DURATION_S
    return {name: known.get(name, default) for name in names}, default


def critical_path(
    order: Sequence[str],
    needs: Mapping[str, Sequence[str]],
    expected: Mapping[str, float],
) -> dict[str, float]:
    """For each item, the expected seconds of the longest chain that starts
    with it: its own duration plus the longest of its dependents' chains.
    Items are taken dependents first (a reverse topological order found by
    counting), so the cost is O(items + needs). ``needs`` naming an item not
    in ``order`` is ignored; the plan refuses cycles, and an item left on one
    anyway counts only its own duration."""
    chain = {name: expected.get(name, 0.0) for name in order}
    dependents: dict[str, list[str]] = {}
    for name, needed_names in needs.items():
        if name in chain:
            for needed in needed_names:
                if needed in chain:
                    dependents.setdefault(needed, []).append(name)
    if not dependents:
        return chain  # no chains: each item is its own
    # Only items on an edge move: one is measured once all its dependents are.
    waiting_on = {name: len(names) for name, names in dependents.items()}
    leaves = [name for name in needs if name in chain and name not in waiting_on]
    while leaves:
        name = leaves.pop()
        after = dependents.get(name)
        if after:
            chain[name] += max(chain[dependent] for dependent in after)
        for needed in needs.get(name, ()):
            if needed in waiting_on:
                waiting_on[needed] -= 1
                if waiting_on[needed] == 0:
                    leaves.append(needed)
    return chain


def duration_key(name: str, content: str) -> str:
    """What an item's history is kept under: its name and the digest of
    what it runs (an edited test starts afresh). A hash, so that keys stay
    short whatever the names."""
    return hashlib.sha256(f"{name}\0{content}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Remaining:
    """An item not final yet, as an estimate of the time left sees it."""

    name: str
    needs: Sequence[str]
    # Seconds its run has been running (0 if not started yet), if it is in flight.
    running_for: float | None = None


def time_left(items: Iterable[Remaining], expected: Mapping[str, float]) -> float | None:
    """Seconds until the items not final yet are done, if each takes what
    it took before (a running one, what is left of that): the longer of the
    longest chain of them (``critical_path``) and their work spread over the
    runs in flight (at least one). An item without history counts as the
    median of those with; None when no item has any. O(items + needs)."""
    if not expected:
        return None
    remaining = list(items)
    if not remaining:
        return 0.0
    durations, _ = expected_durations((item.name for item in remaining), expected)
    running = 0
    left: dict[str, float] = {}
    for item in remaining:
        seconds = durations[item.name]
        if item.running_for is not None:
            running += 1
            seconds = max(0.0, seconds - item.running_for)
        left[item.name] = seconds
    needs = {item.name: item.needs for item in remaining if item.needs}
    longest = max(critical_path(list(left), needs, left).values())
    return max(longest, sum(left.values()) / max(1, running))
