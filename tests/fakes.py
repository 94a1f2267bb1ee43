"""Fakes for what the fast tests do not run for real: time, and a transport.

The fake transport obeys the same contract as the real ones
(tests/transports/test_contract.py runs against both)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from batchctl.model.clock import ManualClock
from batchctl.model.models import Batch, ProcessIdentity, Run, RunStatus
from batchctl.model.viewdoc import BatchReading
from batchctl.model.views import BatchView, FleetContext
from batchctl.state.runs import RunStore

FAKE_SUPERVISOR = ProcessIdentity(boot_id="fake", pid_ns="fake", pid=999_999, start_ticks=1)


class FakeClock(ManualClock):
    def __init__(self, start: datetime | None = None) -> None:
        super().__init__(start or datetime(2026, 11, 22, 5, 0, tzinfo=UTC), monotonic=1000.0)


@dataclass
class FakeTransport:
    """Runs "execute" when the test says so: ``finish`` or ``settle``.

    ``outcomes`` maps item names to (status, exit code); items in ``hold``
    keep running until finished or terminated."""

    runs: RunStore
    clock: FakeClock
    outcomes: dict[str, tuple[RunStatus, int | None]] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)
    dead_executors: set[str] = field(default_factory=set)
    # Starts that die before claiming their run (an executor killed at once).
    lose_starts: int = 0

    def start(self, runs: Sequence[Run]) -> None:
        for run in runs:
            self._start(run)

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """Runs end when the test says so; a "dead executor" is found lost."""
        lost = []
        for run in runs:
            if run.claimed and not run.status.terminal and not self.alive(run):
                self.terminate(run)
                lost.append(run.id)
        return lost

    def due_in(self, now: datetime) -> float | None:
        return None

    def wakeup_fds(self) -> list[int]:
        return []

    def _start(self, run: Run) -> None:
        self.started.append(run.id)
        if self.lose_starts > 0:
            self.lose_starts -= 1
            return

        def claim(current: Run) -> Run | None:
            if current.status is not RunStatus.PENDING or current.claimed:
                return None
            return current.model_copy(
                update={
                    "status": RunStatus.RUNNING,
                    "started_at": self.clock.now(),
                    "supervisor": FAKE_SUPERVISOR,
                }
            )

        claimed = self.runs.update(run.id, claim)
        if claimed.supervisor == FAKE_SUPERVISOR and claimed.status is RunStatus.RUNNING:
            self.executions.append(run.id)
            log = Path(run.log_path)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"hello from {run.item}\n")
            Path(run.artifacts_path).mkdir(parents=True, exist_ok=True)
            (Path(run.artifacts_path) / "result.txt").write_text(run.item)

    def alive(self, run: Run) -> bool:
        return run.claimed and not run.status.terminal and run.id not in self.dead_executors

    def terminate(self, run: Run) -> Run:
        return self.runs.finish(
            run.id, RunStatus.INTERRUPTED, now=self.clock.now(), message="terminated"
        )

    def finish(
        self, run_id: str, status: RunStatus = RunStatus.SUCCEEDED, exit_code: int | None = 0
    ) -> Run:
        return self.runs.finish(run_id, status, now=self.clock.now(), exit_code=exit_code)

    def finish_running(self) -> None:
        """Every started, running, not-held run ends with its item's outcome."""
        for run in self.runs.get_many(self.executions).values():
            if run.status is RunStatus.RUNNING and run.item not in self.hold:
                status, code = self.outcomes.get(run.item, (RunStatus.SUCCEEDED, 0))
                self.finish(run.id, status, code)


def batch_view(
    batch: Batch, runs: Mapping[str, Run], context: FleetContext | None = None
) -> BatchView:
    """The view the commands show, of a typed batch and runs in hand: through
    the same builder, from their stored form."""
    stored = {run_id: run.model_dump(mode="json") for run_id, run in runs.items()}
    reading = BatchReading(batch.model_dump(mode="json"), stored, "", context)
    return BatchView.model_validate(reading.document())
