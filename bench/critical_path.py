"""What starting ready items longest critical path first buys: the makespan
of a realistic DAG on a busy fleet, against first in, first out.

The real scheduler (``Scheduler.step``) with the real state files drives
simulated machines on a virtual clock: a run takes exactly its item's
duration, and the clock jumps to the next run end, so the figures are
exact and the same on any machine, however loaded. The plan, drawn with a
fixed seed:

  - 200 short independent unit tests (5-60 s), listed first, as plans often
    list them;
  - ``build`` (60 s), then a chain of 8 integration stages (90-150 s each),
    then ``package`` (30 s) needing the last stage and every medium test;
  - 20 medium tests (100-300 s) needing ``build``.

The fleet is 8 machines of one slot each: far more work is ready at once
than it can run (a busy fleet). The batch runs three times in one state
directory: once to learn the durations (kept in durations.json as the
worker keeps them), then critical path first, then first in, first out
(plan order; ``SchedulerSettings.critical_path_first=False``, what
``$BATCHCTL_READY_ORDER=fifo`` sets). Both measured runs find the same
history; only the order differs.

    .venv/bin/python bench/critical_path.py
    .venv/bin/python bench/critical_path.py --machines 16 --seed 7
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchctl.engine.scheduler import Scheduler, SchedulerSettings
from batchctl.model.clock import ManualClock
from batchctl.model.fleet import Fleet, Machine
from batchctl.model.models import Batch, Item, Run, RunStatus
from batchctl.model.plan import load_plan_text
from batchctl.state.batches import BatchStore
from batchctl.state.durations import DurationStore
from batchctl.state.runs import RunStore
from batchctl.transports.runners.base import Ended, ending
from batchctl.transports.testdir import hash_test_dir


class TimedMachines:
    """Simulated machines whose runs take their item's duration, exactly."""

    def __init__(self, runs: RunStore, clock: ManualClock, took: dict[str, float]) -> None:
        self.runs = runs
        self.clock = clock
        self.took = took
        self._due: list[tuple[datetime, str]] = []

    def start(self, runs: Sequence[Run]) -> None:
        now = self.clock.now()

        def claim(run: Run) -> Run | None:
            return (
                None
                if run.claimed
                else run.model_copy(update={"status": RunStatus.RUNNING, "started_at": now})
            )

        for run in self.runs.update_many({run.id: claim for run in runs}):
            heapq.heappush(self._due, (now + timedelta(seconds=self.took[run.item]), run.id))

    def check(self, runs: Sequence[Run], now: datetime) -> list[str]:
        ended: dict[str, Callable[[Run], Run | None]] = {}
        while self._due and self._due[0][0] <= now:
            _, run_id = heapq.heappop(self._due)
            ended[run_id] = ending(Ended(RunStatus.SUCCEEDED, 0), now)
        if ended:
            self.runs.update_many(ended)
        return []

    def due_in(self, now: datetime) -> float | None:
        return max(0.0, (self._due[0][0] - now).total_seconds()) if self._due else None

    def wakeup_fds(self) -> list[int]:
        return []

    def terminate(self, run: Run) -> Run:
        return self.runs.finish(run.id, RunStatus.INTERRUPTED, now=self.clock.now())


def draw_plan(seed: int) -> tuple[str, dict[str, float]]:
    draw = random.Random(seed)  # noqa: S311 - a drawn plan, not a secret
    took: dict[str, float] = {}
    lines = ["version: 1", "entries:"]
    for n in range(200):
        took[f"unit{n:03d}"] = round(draw.uniform(5, 60))
        lines.append(f"  - {{name: unit{n:03d}, dir: suite}}")
    took["build"] = 60
    lines.append("  - {name: build, dir: suite}")
    previous = "build"
    for n in range(8):
        took[f"stage{n}"] = round(draw.uniform(90, 150))
        lines.append(f"  - {{name: stage{n}, dir: suite, needs: [{previous}]}}")
        previous = f"stage{n}"
    medium = []
    for n in range(20):
        took[f"medium{n:02d}"] = round(draw.uniform(100, 300))
        lines.append(f"  - {{name: medium{n:02d}, dir: suite, needs: [build]}}")
        medium.append(f"medium{n:02d}")
    took["package"] = 30
    lines.append(f"  - {{name: package, dir: suite, needs: [{previous}, {', '.join(medium)}]}}")
    return "\n".join(lines) + "\n", took


def makespan(
    root: Path, plan_text: str, took: dict[str, float], machines: int, *, critical_path_first: bool
) -> float:
    """Runs the plan as a new batch to its end; its virtual seconds."""
    state = root / "state"
    batches, runs, durations = BatchStore(state), RunStore(state), DurationStore(state)
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    plan = load_plan_text(plan_text, path="plan.yaml", base_dir=root, source="bench", env_tag=None)
    now = clock.now()
    batch = Batch(
        id=f"b-{len(batches.ids())}",
        plan_hash=plan.plan_hash,
        staging=str(len(batches.ids())),
        created_by="bench",
        created_at=now,
        expected_count=len(plan.entries),
        source="bench",
        entries=plan.entries,
        items={entry.name: Item(name=entry.name, updated_at=now) for entry in plan.entries},
    )
    batches.create_or_get(plan.plan_hash, batch.staging, force_new=True, new_batch=lambda: batch)
    fleet = Fleet(
        machines=tuple(Machine(name=f"m{n}", tags=("local",), slots=1) for n in range(machines)),
        source="bench",
    )
    scheduler = Scheduler(
        batches=batches,
        runs=runs,
        fleet=fleet,
        transports={"local": TimedMachines(runs, clock, took)},
        lease_token=None,
        settings=SchedulerSettings(critical_path_first=critical_path_first),
        hash_dir=hash_test_dir,
        durations=durations,
    )
    began = clock.now()
    while not scheduler.step(batch.id, clock.now()).done:
        due = scheduler.due_in(clock.now())
        clock.advance(due if due else 0.001)
    scheduler.keep_durations(batch.id, clock.now())
    return (clock.now() - began).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    plan_text, took = draw_plan(args.seed)
    with tempfile.TemporaryDirectory(prefix="critical-path-") as tmp:
        root = Path(tmp)
        suite = root / "suite"
        suite.mkdir()
        (suite / "run.sh").write_text("#!/bin/sh\ntrue\n")
        (suite / "run.sh").chmod(0o755)
        learned = makespan(root, plan_text, took, args.machines, critical_path_first=False)
        first = makespan(root, plan_text, took, args.machines, critical_path_first=True)
        fifo = makespan(root, plan_text, took, args.machines, critical_path_first=False)
    work = sum(took.values())
    chain = took["build"] + sum(took[f"stage{n}"] for n in range(8)) + took["package"]
    bound = max(chain, work / args.machines)
    print(f"{len(took)} items, {work:,.0f} s of work, on {args.machines} machines of 1 slot")
    spread = work / args.machines
    print(
        f"lower bound (longest chain {chain:,.0f} s, work / machines {spread:,.0f} s): "
        f"{bound:,.0f} s"
    )
    print()
    print("| order | makespan | over the lower bound |")
    print("|---|---:|---:|")
    print(f"| first in, first out (plan order) | {fifo:,.0f} s | {fifo / bound:.2f}x |")
    print(f"| longest critical path first | {first:,.0f} s | {first / bound:.2f}x |")
    print()
    print(f"critical path first / first in, first out: {first / fifo:.2f}")
    if learned != fifo:
        print(f"(the learning run, plan order too, took {learned:,.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
