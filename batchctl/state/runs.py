"""runs.json: every run's outcome (SPEC §4)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from batchctl.core.models import Run
from batchctl.state.jsonfile import DEFAULT_LOCK_TIMEOUT_S, JsonStateFile

RUNS_SCHEMA_VERSION = 1


class RunStore:
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.state_dir = state_dir
        self.file = JsonStateFile(
            state_dir / "runs.json",
            schema_version=RUNS_SCHEMA_VERSION,
            collection="runs",
            lock_timeout=lock_timeout,
        )

    def get_many(self, run_ids: Iterable[str]) -> dict[str, Run]:
        records = self.file.read()["runs"]
        return {
            run_id: Run.model_validate(records[run_id]) for run_id in run_ids if run_id in records
        }
