"""Simulated machines (``transport: sim``): runs that take a drawn time and
end with a drawn outcome, without starting a process.

They go through the whole engine — leases, both journals, claims, reaping
after a takeover — so a plan can be rehearsed on a fleet before spending
machines on it, and the engine can be measured at scale. What a run does is
a pure function of its id and its machine's ``duration`` and ``outcomes``:
any worker, including one that took over from a dead one, agrees on when it
ends and how, so a simulated run is never lost. Simulated runs write no
output and no artifacts.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from batchctl.model.clock import Clock
from batchctl.model.fleet import SIM_OUTCOMES, FleetSource, Machine
from batchctl.model.models import Run, RunStatus
from batchctl.state.runs import RunStore
from batchctl.transports.runners.base import Ended, ending


@dataclass(frozen=True)
class SimOutcome:
    seconds: float
    status: RunStatus
    exit_code: int | None
    error_code: str | None


def simulate(machine: Machine, run_id: str) -> SimOutcome:
    """How long the run takes and how it ends, drawn from its id."""
    draw = random.Random(run_id)  # noqa: S311 - a simulation, not a secret
    low, high = machine.duration
    seconds = low if high == low else draw.uniform(low, high)
    pick = draw.random()
    status = RunStatus.SUCCEEDED
    threshold = 0.0
    for name in SIM_OUTCOMES:
        if name == "succeeded":
            continue  # what the other shares leave over
        threshold += machine.outcomes.get(name, 0.0)
        if pick < threshold:
            status = RunStatus(name)
            break
    exit_code = 0 if status is RunStatus.SUCCEEDED else 1 if status is RunStatus.FAILED else None
    error_code = "simulated_error" if status is RunStatus.ERROR else None
    return SimOutcome(seconds, status, exit_code, error_code)


class SimTransport:
    def __init__(
        self,
        runs: RunStore,
        clock: Clock,
        fleet: FleetSource,
    ) -> None:
        self.runs = runs
        self.clock = clock
        self.fleet = fleet
        self._due: list[tuple[datetime, str]] = []
        self._plans: dict[str, SimOutcome] = {}

    def start(self, runs: Sequence[Run]) -> None:
        """Claim every run in one write."""
        now = self.clock.now()

        # No supervisor is recorded: whoever holds the batch takes a simulated
        # run on (see ``alive``), and the claim stays small.
        def claim(run: Run) -> Run | None:
            if run.claimed:
                return None
            return run.model_copy(update={"status": RunStatus.RUNNING, "started_at": now})

        for run in self.runs.update_many({run.id: claim for run in runs}):
            if run.status is RunStatus.RUNNING:
                self._adopt(run)

    def _adopt(self, run: Run) -> None:
        if run.id in self._plans:
            return
        machine = self.fleet.get().get(run.machine)
        if machine is None:
            return
        plan = simulate(machine, run.id)
        self._plans[run.id] = plan
        started = run.started_at or self.clock.now()
        heapq.heappush(self._due, (started + timedelta(seconds=plan.seconds), run.id))

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        """A simulated run cannot be lost: whoever looks takes it on. Every
        run whose time is up is recorded, in one write."""
        for run in runs:
            if run.claimed and not run.status.terminal:
                self._adopt(run)
        self.settle(now)
        return []

    def wakeup_fds(self) -> list[int]:
        return []

    def terminate(self, run: Run) -> Run:
        self._plans.pop(run.id, None)
        return self.runs.finish(
            run.id, RunStatus.INTERRUPTED, now=self.clock.now(), message="stopped (simulated)"
        )

    def settle(self, now: datetime) -> None:
        """Record every run whose time is up, in one write."""
        ended: dict[str, Callable[[Run], Run | None]] = {}
        while self._due and self._due[0][0] <= now:
            _, run_id = heapq.heappop(self._due)
            plan = self._plans.pop(run_id, None)
            if plan is not None:
                outcome = Ended(plan.status, plan.exit_code, plan.error_code, "simulated")
                ended[run_id] = ending(outcome, now)
        if ended:
            self.runs.update_many(ended)

    def due_in(self, now: datetime) -> float | None:
        if not self._due:
            return None
        return max(0.0, (self._due[0][0] - now).total_seconds())
