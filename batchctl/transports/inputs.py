"""Artifacts between items: an entry's ``inputs`` (entries it needs) give
its run the artifacts their passing runs collected, in
``$BATCHCTL_INPUTS_DIR/<item>/``, on whatever machine it lands.

The controller gathers them into the run directory (``inputs/``) before the
run starts: a local run reads them there, an ssh run gets them uploaded
beside its work copy. Gathered whole or not at all (``inputs.partial`` is
renamed once complete), so a worker that dies halfway gathers again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batchctl.model.models import RunStatus
from batchctl.state.runs import RunStore

INPUTS_VARIABLE = "BATCHCTL_INPUTS_DIR"


class InputsMissing(Exception):
    """A needed item has no passing run whose artifacts could be given."""


def gather_inputs(
    run_dir: Path,
    inputs: Sequence[str],
    artifacts_of: Callable[[str], Path | None],
) -> Path:
    """``run_dir/inputs`` holding a copy of each input item's artifacts.
    ``artifacts_of(item)`` is the artifacts directory of the item's passing
    run, or None if it has none. O(bytes of the inputs)."""
    gathered = run_dir / "inputs"
    if gathered.is_dir():
        return gathered
    partial = run_dir / "inputs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    for item in inputs:
        source = artifacts_of(item)
        if source is None:
            raise InputsMissing(f"{item} has no passing run to take artifacts from")
        if source.is_dir():
            # Links are copied as links: an input is what the run left, and
            # artifacts that came over ssh were checked when extracted.
            shutil.copytree(source, partial / item, symlinks=True)
        else:
            (partial / item).mkdir(mode=0o700)  # it passed without leaving any
    partial.rename(gathered)
    return gathered


def artifacts_of_passing_run(
    runs: RunStore, batch_raw: Mapping[str, Any], item: str
) -> Path | None:
    """The artifacts directory of ``item``'s current run in the batch, if
    that run passed."""
    stored = batch_raw["items"].get(item)
    run_id = stored.get("run_id") if stored else None
    if not run_id:
        return None
    run = runs.get(run_id)
    return Path(run.artifacts_path) if run.status is RunStatus.SUCCEEDED else None
