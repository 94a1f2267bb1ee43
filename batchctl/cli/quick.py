"""``batchctl status ID --json`` of a finished batch, answered from the stored
records before the rest of the command line is imported.

A finished batch's view needs no fleet, no clock and no worker: every item is
final, so nothing waits to be explained and nothing needs taking over. The
worker that finished it wrote its final view (``state.final_views``), which
is printed as stored: an interpreter start plus a decompression. Without one
(finished by an older batchctl, a view that could not be written, a state
directory reached by another path), the records are read raw
(``state.folds``), joined (``model.viewdoc``) and printed: O(items + runs
read), where the full command line costs its imports (typer, pydantic:
several times a small batch's read) and the validation of every record of a
large one.

Anything else returns None and the full command line answers: another form
of the command, an unfinished batch, an error to report. It prints the same
document, built by the same code.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from pathlib import Path

from batchctl.cli.envelope import print_bytes, print_ok
from batchctl.cli.locations import resolve_state_dir
from batchctl.model.errors import Interrupted
from batchctl.model.viewdoc import BatchReading, Document
from batchctl.state import final_views
from batchctl.state.folds import RunFold, batches_file, resolve_id, runs_file


def parse_status_json(args: Sequence[str]) -> tuple[str, str | None] | None:
    """(batch id, --state-dir) for exactly ``status ID --json [--state-dir DIR]
    [--fleet FILE] [--quiet]`` in any order; None for every other command
    line. The fleet is not read: a finished batch's view does not need it."""
    if not args or args[0] != "status":
        return None
    batch_id: str | None = None
    state_dir: str | None = None
    json_seen = fleet_seen = False
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--json" and not json_seen:
            json_seen = True
        elif arg in ("--quiet", "-q"):
            continue  # JSON mode prints no remarks anyway
        elif arg == "--state-dir" and rest and state_dir is None:
            state_dir = rest.pop(0)
        elif arg.startswith("--state-dir=") and state_dir is None:
            state_dir = arg.removeprefix("--state-dir=")
        elif arg == "--fleet" and rest and not fleet_seen:
            rest.pop(0)
            fleet_seen = True
        elif arg.startswith("--fleet=") and not fleet_seen:
            fleet_seen = True
        elif not arg.startswith("-") and batch_id is None:
            batch_id = arg
        else:
            return None
    if batch_id is None or not json_seen:
        return None
    return batch_id, state_dir


# What the answer was built from, and the answer itself, are kept to the end
# of the process: the command exits right after printing, and freeing a
# 100,000-item batch's millions of objects one by one first took a quarter
# of its whole time (bench/RESULTS.md).
_KEPT_TO_THE_END: list[object] = []


def finished_view(state_dir: Path, batch_id: str) -> Document | None:
    """The view of a finished batch; None while it is not finished."""
    batches = batches_file(state_dir)
    _KEPT_TO_THE_END.append(batches)
    records = batches.read()["batches"]
    batch = records[resolve_id(records, batch_id, "batch")]
    # The worker marks a batch finished once every item is final; until then
    # the full command explains waiting items and looks after the worker.
    if not batch.get("finished", False):
        return None
    runs = runs_file(state_dir, RunFold(indexed=False))
    _KEPT_TO_THE_END.append(runs)
    document = BatchReading(batch, runs.read()["runs"], str(state_dir / "runs")).document()
    # Retried since, by a command the worker has not seen yet: not finished.
    return document if document["done"] else None


def answer(args: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """Print the answer and return the exit code, or None: not answered here."""
    request = parse_status_json(args)
    if request is None:
        return None
    batch_id, state_option = request
    try:
        state_dir = resolve_state_dir(state_option, environ)
        stored = final_views.read(state_dir, batch_id, str(state_dir / "runs"))
    except Interrupted:
        raise
    except Exception:
        return None  # the full command line says what is wrong, in its words
    if stored is not None:
        print_bytes(stored)
        return 0
    # The collector is off while the records are read and joined (millions
    # of acyclic objects), and stays off once the answer is printed: the
    # process ends, and the first collection after building them walks every
    # one of them (a seventh of a second on a 100,000-item batch).
    collecting = gc.isenabled()
    gc.disable()
    try:
        document = finished_view(state_dir, batch_id)
    except Interrupted:
        raise
    except Exception:
        # Whatever it is (an unknown id, an unreadable or damaged file, a
        # bug), the full command line reports it, in its words, with its
        # exit code and, for a bug, its crash report.
        document = None
    if document is None:
        if collecting:
            gc.enable()
        return None
    _KEPT_TO_THE_END.append(document)
    print_ok({"batch": document})
    return 0
