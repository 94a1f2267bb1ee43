"""runs.json: every run's outcome (SPEC §4), as snapshot + journal.

Journal records:

- ``{"op": "create", "runs": [{...}, ...]}`` prepared runs, whole;
- ``{"op": "update", "run": ID, "set": {FIELD: VALUE}}`` the fields one
  transition changes (claimed, started, ended); applied only while the run
  is not terminal and only if its status does not move backwards;
- ``{"op": "remove", "runs": [ID, ...]}`` (prune, followed by a compaction).

A run's status is written once per transition; liveness (heartbeats) never
touches this file.

``prepare_many`` is the one place machine capacity is decided: under the
runs lock it sees how many non-terminal runs every machine holds, from an
index the fold keeps current, so deciding costs what is asked, not the
number of runs ever kept.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from batchctl.model.models import Run, RunStatus
from batchctl.model.rules import RUN_STATUS_RANK
from batchctl.state.folds import RunFold, RunIndex, resolve_id, runs_file
from batchctl.state.journal import (
    COMPACT_MIN_BYTES,
    DEFAULT_LOCK_TIMEOUT_S,
    Record,
    Subscription,
)


class Answer(StrEnum):
    CREATED = "created"
    REUSE = "reuse"
    BUSY = "busy"


@dataclass(frozen=True)
class PrepareRequest:
    """Ask for a run of one batch item attempt on the first machine in
    ``candidates`` (preference order) with a free slot."""

    batch_id: str
    item: str
    attempt: int
    candidates: Sequence[str]
    test_dir: str
    test_dir_hash: str


@dataclass(frozen=True)
class SlotClaim:
    """A slot to hold back for someone with precedence (another batch's
    waiting item), without creating a run: it takes the first free candidate."""

    candidates: Sequence[str]


@dataclass(frozen=True)
class PrepareResult:
    answer: Answer
    run: Run | None = None


@dataclass
class _Occupancy:
    slots: Mapping[str, int]
    held: Counter[str] = field(default_factory=Counter)

    def take(self, candidates: Sequence[str]) -> str | None:
        for machine in candidates:
            if self.held[machine] < self.slots.get(machine, 0):
                self.held[machine] += 1
                return machine
        return None


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


class RunStore:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        compact_min_bytes: int | None = None,
        share_values: bool = False,
    ) -> None:
        """``share_values``: for a process that keeps the state for long (a
        worker), share repeated strings; a one-shot read skips the cost."""
        self.state_dir = state_dir
        self.share_values = share_values
        # Where run directories are, as a string: views derive 200,000 paths
        # from it for a 100,000-item batch.
        self.runs_prefix = str(state_dir / "runs")
        self._fold = RunFold(share=share_values)
        self.file = runs_file(
            state_dir,
            self._fold,
            lock_timeout=lock_timeout,
            compact_min_bytes=COMPACT_MIN_BYTES if compact_min_bytes is None else compact_min_bytes,
        )

    @property
    def index(self) -> RunIndex:
        return self._fold.index

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / run_id

    def _run(self, raw: Mapping[str, Any]) -> Run:
        """A stored run; where its log and artifacts are is left out of the
        record when it is the usual place in its run directory."""
        if "log_path" in raw:
            return Run.model_validate(raw)
        # Strings, not Paths: a 100,000-run view builds these 200,000 times.
        run_dir = f"{self.runs_prefix}/{raw['id']}"
        return Run.model_validate(
            {**raw, "log_path": f"{run_dir}/output.log", "artifacts_path": f"{run_dir}/artifacts"}
        )

    # -- reading -----------------------------------------------------------

    def stored(self) -> Mapping[str, Any]:
        """Every stored run by id, as stored (not copies: look, do not change)."""
        runs: Mapping[str, Any] = self.file.read()["runs"]
        return runs

    def get(self, run_id: str) -> Run:
        records = self.file.read()["runs"]
        return self._run(records[resolve_id(records, run_id, "run")])

    def get_many(self, run_ids: Iterable[str]) -> dict[str, Run]:
        records = self.file.read()["runs"]
        return {run_id: self._run(records[run_id]) for run_id in run_ids if run_id in records}

    def non_terminal(self) -> list[Run]:
        """Every run that holds a slot: O(live runs), from the index."""
        records = self.file.read()["runs"]
        return [
            self._run(records[run_id])
            for live in self.index.live_by_machine.values()
            for run_id in live
        ]

    def ids_of_batches(self, batch_ids: Iterable[str]) -> set[str]:
        """The runs of these batches, every attempt: O(their runs), from the index."""
        with self.file.reading():
            return self._ids_of_batches(batch_ids)

    def _ids_of_batches(self, batch_ids: Iterable[str]) -> set[str]:
        return {
            run_id for batch_id in batch_ids for run_id in self.index.by_batch.get(batch_id, ())
        }

    def held(self) -> dict[str, int]:
        """How many slots each machine has taken."""
        self.file.read()
        return {machine: len(ids) for machine, ids in self.index.live_by_machine.items() if ids}

    def held_by_batch(self) -> dict[str, int]:
        """How many slots each batch's runs hold: O(batches holding any)."""
        self.file.read()
        return {batch_id: len(ids) for batch_id, ids in self.index.live_by_batch.items()}

    def run_counts(self, batch_ids: Iterable[str]) -> dict[str, int]:
        """How many runs each of these batches has had, every attempt:
        O(batches asked), from the index."""
        self.file.read()
        return {batch_id: len(self.index.by_batch.get(batch_id, ())) for batch_id in batch_ids}

    def subscribe(self) -> Subscription:
        """Follow the records folded from now on (see JournaledFile.subscribe)."""
        return self.file.subscribe()

    # -- writing -----------------------------------------------------------

    def prepare_many(
        self,
        requests: Sequence[PrepareRequest],
        *,
        slots: Mapping[str, int],
        now: datetime,
        held_back: Sequence[SlotClaim] = (),
    ) -> list[PrepareResult]:
        """Answer each request in order: *reuse* when a run of that batch item
        attempt exists, else *created* on a free candidate, else *busy*.
        O(requests + claims), whatever the number of runs kept."""
        with self.file.locked() as document:
            records: dict[str, Any] = document["runs"]
            occupancy = _Occupancy(slots, Counter(self.held()))
            for claim in held_back:
                occupancy.take(claim.candidates)
            results: list[PrepareResult] = []
            created: list[dict[str, Any]] = []
            for request in requests:
                existing = self.index.by_attempt.get(
                    (request.batch_id, request.item, request.attempt)
                )
                if existing is not None:
                    results.append(PrepareResult(Answer.REUSE, self._run(records[existing])))
                    continue
                machine = occupancy.take(request.candidates)
                if machine is None:
                    results.append(PrepareResult(Answer.BUSY))
                    continue
                run_id = new_run_id(now)
                run_dir = self.run_dir(run_id)
                run = Run(
                    id=run_id,
                    batch_id=request.batch_id,
                    item=request.item,
                    attempt=request.attempt,
                    machine=machine,
                    test_dir=request.test_dir,
                    test_dir_hash=request.test_dir_hash,
                    created_at=now,
                    log_path=str(run_dir / "output.log"),
                    artifacts_path=str(run_dir / "artifacts"),
                )
                created.append(
                    run.model_dump(
                        mode="json", exclude_none=True, exclude={"log_path", "artifacts_path"}
                    )
                )
                results.append(PrepareResult(Answer.CREATED, run))
            if created:
                self.file.append([{"op": "create", "runs": created}])
            return results

    def update(self, run_id: str, change: Callable[[Run], Run | None]) -> Run:
        """Apply ``change`` to the fresh run under the lock; None means no
        write. Only the fields that changed are written. Status only moves
        forward and a terminal run is final, whatever ``change`` says."""
        with self.file.locked() as document:
            records = document["runs"]
            run_id = resolve_id(records, run_id, "run")
            current = self._run(records[run_id])
            if current.status.terminal:
                return current
            proposed = change(current)
            if (
                proposed is None
                or RUN_STATUS_RANK[proposed.status] < RUN_STATUS_RANK[current.status]
            ):
                return current
            before = current.model_dump(mode="json")
            after = proposed.model_dump(mode="json")
            changed = {key: value for key, value in after.items() if before.get(key) != value}
            if changed:
                self.file.append([{"op": "update", "run": run_id, "set": changed}])
            return proposed

    def update_many(self, changes: Mapping[str, Callable[[Run], Run | None]]) -> list[Run]:
        """``update`` for several runs under one lock, in one append: O(runs
        changed). Returns every run as it stands after (unknown ids left out)."""
        with self.file.locked() as document:
            records = document["runs"]
            results: list[Run] = []
            appended: list[Record] = []
            for run_id, change in changes.items():
                if run_id not in records:
                    continue
                current = self._run(records[run_id])
                proposed = None if current.status.terminal else change(current)
                if (
                    proposed is None
                    or RUN_STATUS_RANK[proposed.status] < RUN_STATUS_RANK[current.status]
                ):
                    results.append(current)
                    continue
                before = current.model_dump(mode="json")
                after = proposed.model_dump(mode="json")
                changed = {key: value for key, value in after.items() if before.get(key) != value}
                if changed:
                    appended.append({"op": "update", "run": run_id, "set": changed})
                results.append(proposed)
            self.file.append(appended)
            return results

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        now: datetime,
        exit_code: int | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> Run:
        """Move a run to a terminal status (no-op if it already is terminal)."""
        return self.update(
            run_id,
            lambda run: run.model_copy(
                update={
                    "status": status,
                    "exit_code": exit_code,
                    "error_code": error_code,
                    "message": message,
                    "ended_at": now,
                }
            ),
        )

    def remove(self, run_ids: set[str]) -> None:
        with self.file.locked():
            self.file.append([{"op": "remove", "runs": sorted(run_ids)}])

    def remove_batches(self, batch_ids: Iterable[str]) -> set[str]:
        """Remove every run of these batches (every attempt), chosen under the
        lock from the fresh index, and fold the journal into a new snapshot
        at once: the remove record alone would make the file bigger, not
        smaller. Returns the ids of the runs removed."""
        with self.file.locked():
            run_ids = self._ids_of_batches(batch_ids)
            if run_ids:
                self.file.append([{"op": "remove", "runs": sorted(run_ids)}], compact=True)
            return run_ids
