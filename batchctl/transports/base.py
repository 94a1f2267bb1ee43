"""What the scheduler needs from a transport. Every transport — and the fake
used by the scheduler's fast tests — passes the same contract tests
(tests/transports/test_contract.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from batchctl.model.models import Run


class Transport(Protocol):
    def start(self, runs: Sequence[Run]) -> None:
        """Begin executing prepared (pending) runs and return at once. Each run
        moves to running and then to a terminal status in the runs store, with
        its output in ``run.log_path`` and its artifacts in ``run.artifacts_path``.
        Starting a run twice executes it once: claiming a run is exclusive."""
        ...

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Look at runs in flight that this transport serves, on fresh facts,
        and record what changed (claimed, ended, supervisor gone). Returns
        the ids of the runs found lost (ended ``interrupted`` here)."""
        ...

    def due_in(self, now: datetime) -> float | None:
        """Seconds until something this transport supervises is due (a run
        ending, a KILL after a grace), if known; the worker sleeps no longer."""
        ...

    def wakeup_fds(self) -> list[int]:
        """File descriptors readable as soon as a supervised run ends."""
        ...

    def terminate(self, run: Run) -> Run:
        """Ask the run to stop, deciding on fresh facts, and return the run as
        it stands after. A run nobody claimed yet ends ``interrupted`` at once
        (a late claim then fails). A run whose supervisor is alive is asked to
        stop and records its end itself. A run whose supervisor is gone has
        what is left of it killed and ends ``interrupted`` once that is
        confirmed; if it cannot be confirmed, the run stays non-terminal,
        holding its slot, with a message saying why. Nothing here kills a
        process of another host, or one identified by a stale read."""
        ...
