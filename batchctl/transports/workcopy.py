"""What a run needs in place before its test starts, on every transport: a
copy of its test and the artifacts of its inputs. What cannot be made ends
the run ``error`` with a code saying which (``NotStarted``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from batchctl.model.models import Run, RunStatus
from batchctl.state.runs import RunStore
from batchctl.state.snapshots import SnapshotStore
from batchctl.transports.inputs import INPUTS_VARIABLE, InputsMissing, gather_inputs
from batchctl.transports.runners.base import Ended


class NotStarted(Exception):
    """The run cannot start; ``ended`` is how it ends instead."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.ended = Ended(RunStatus.ERROR, error_code=error_code, message=message)


def record_end(runs: RunStore, run_id: str, ended: Ended, now: datetime) -> Run:
    """``ended`` recorded as the run's end: one that could not start, or
    that a transport saw end."""
    return runs.finish(
        run_id,
        ended.status,
        now=now,
        exit_code=ended.exit_code,
        error_code=ended.error_code,
        message=ended.message,
    )


def work_copy(
    run_dir: Path, *, test_dir: str, snapshot: str | None, snapshots: SnapshotStore | None
) -> Path:
    """``run_dir/work``: the batch's snapshot of the test, or, for a batch
    made before snapshots, a copy of its directory as it is now."""
    try:
        if snapshot and snapshots is not None:
            return snapshots.materialize_whole(snapshot, run_dir)
        return copy_test_dir(Path(test_dir), run_dir)
    except (OSError, ValueError) as exc:  # ValueError: a damaged snapshot tree
        raise NotStarted("upload_failed", f"cannot copy {test_dir}: {exc}") from None


def copy_test_dir(source: Path, run_dir: Path) -> Path:
    """A fresh copy for the run, put in place whole (a copy cut short by a
    crash is redone, never run half-made)."""
    work = run_dir / "work"
    if work.is_dir():
        return work
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / "work.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, symlinks=True)
    # The copy keeps its files' modes; its top is private like the rest.
    staging.chmod(0o700)
    staging.rename(work)
    return work


def entrypoint_in(work: Path, entrypoint: str, test_dir: str) -> Path:
    """The script the run starts, which the machine's OS asks for."""
    script = work / entrypoint
    if not script.is_file():
        raise NotStarted("entrypoint_missing", f"{entrypoint} not found in {test_dir}")
    return script


def inputs_given(
    run_dir: Path, inputs: Sequence[str], artifacts_of: Callable[[str], Path | None]
) -> dict[str, str]:
    """The variable naming the gathered inputs (none without inputs)."""
    if not inputs:
        return {}
    try:
        gathered = gather_inputs(run_dir, inputs, artifacts_of)
    except (OSError, InputsMissing) as exc:
        raise NotStarted(
            "inputs_failed", f"cannot gather the artifacts of its inputs: {exc}"
        ) from None
    return {INPUTS_VARIABLE: str(gathered)}
