"""runs.json: every run's outcome (SPEC §4).

``prepare_many`` is the one place machine capacity is decided: under the runs
lock it sees every non-terminal run of every batch, so a machine never holds
more non-terminal runs than its slots, whichever process asks.
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

from batchctl.model.models import RUN_STATUS_ORDER, Run, RunStatus
from batchctl.state.batches import resolve_id
from batchctl.state.jsonfile import DEFAULT_LOCK_TIMEOUT_S, Document, JsonStateFile

RUNS_SCHEMA_VERSION = 1
_TERMINAL_VALUES = frozenset(status.value for status in RunStatus if status.terminal)


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
    """Slots to hold back for someone with precedence (an older batch's ready
    item), without creating a run: it takes the first free candidate."""

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
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.state_dir = state_dir
        self.file = JsonStateFile(
            state_dir / "runs.json",
            schema_version=RUNS_SCHEMA_VERSION,
            collection="runs",
            lock_timeout=lock_timeout,
        )

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / run_id

    def get(self, run_id: str) -> Run:
        records = self.file.read()["runs"]
        return Run.model_validate(records[resolve_id(records, run_id, "run")])

    def get_many(self, run_ids: Iterable[str]) -> dict[str, Run]:
        records = self.file.read()["runs"]
        return {
            run_id: Run.model_validate(records[run_id]) for run_id in run_ids if run_id in records
        }

    def non_terminal(self) -> list[Run]:
        return [
            Run.model_validate(raw)
            for raw in self.file.read()["runs"].values()
            if raw["status"] not in _TERMINAL_VALUES
        ]

    def prepare_many(
        self,
        requests: Sequence[PrepareRequest],
        *,
        slots: Mapping[str, int],
        now: datetime,
        held_back: Sequence[SlotClaim] = (),
    ) -> list[PrepareResult]:
        """Answer each request in order: *reuse* when a run of that batch item
        attempt exists, else *created* on a free candidate, else *busy*."""

        def change(document: Document) -> tuple[Document | None, list[PrepareResult]]:
            records: dict[str, Any] = document["runs"]
            occupancy = _Occupancy(slots)
            by_attempt: dict[tuple[str, str, int], dict[str, Any]] = {}
            for raw in records.values():
                by_attempt[(raw["batch_id"], raw["item"], raw["attempt"])] = raw
                if raw["status"] not in _TERMINAL_VALUES:
                    occupancy.held[raw["machine"]] += 1
            for claim in held_back:
                occupancy.take(claim.candidates)
            results: list[PrepareResult] = []
            for request in requests:
                existing = by_attempt.get((request.batch_id, request.item, request.attempt))
                if existing is not None:
                    results.append(PrepareResult(Answer.REUSE, Run.model_validate(existing)))
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
                records[run_id] = run.model_dump(mode="json")
                results.append(PrepareResult(Answer.CREATED, run))
            changed = any(result.answer is Answer.CREATED for result in results)
            return (document if changed else None), results

        return self.file.update(change)

    def update(self, run_id: str, change: Callable[[Run], Run | None]) -> Run:
        """Apply ``change`` to the fresh run; None means no write. Status only
        moves forward and a terminal run is final, whatever ``change`` says."""

        def apply(document: Document) -> tuple[Document | None, Run]:
            records = document["runs"]
            current = Run.model_validate(records[resolve_id(records, run_id, "run")])
            if current.status.terminal:
                return None, current
            proposed = change(current)
            if (
                proposed is None
                or RUN_STATUS_ORDER[proposed.status] < RUN_STATUS_ORDER[current.status]
            ):
                return None, current
            records[current.id] = proposed.model_dump(mode="json")
            return document, proposed

        return self.file.update(apply)

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
                    "heartbeat_at": now,
                }
            ),
        )

    def remove(self, run_ids: set[str]) -> None:
        def change(document: Document) -> tuple[Document | None, None]:
            for run_id in run_ids:
                document["runs"].pop(run_id, None)
            return document, None

        self.file.update(change)
