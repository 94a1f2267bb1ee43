"""What the scheduler needs from a transport. Every transport — and the fake
used by the scheduler's fast tests — passes the same contract tests
(tests/transports/test_contract.py)."""

from __future__ import annotations

from typing import Protocol

from batchctl.model.models import Run


class Transport(Protocol):
    def start(self, run: Run) -> None:
        """Begin executing a prepared (pending) run and return at once. The run
        moves to running and then to a terminal status in the runs store, with
        its output in ``run.log_path`` and its artifacts in ``run.artifacts_path``.
        Starting a run twice executes it once."""
        ...

    def alive(self, run: Run) -> bool:
        """Is the executor of a claimed run still there to record its end?
        (False once the run is terminal: its end is recorded.)"""
        ...

    def terminate(self, run: Run) -> None:
        """Ask the run to stop. A run with a live executor is stopped by it and
        ends ``interrupted`` shortly; one whose executor is gone has its
        leftover processes killed and is marked ``interrupted`` here."""
        ...
