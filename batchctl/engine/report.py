"""Gathering a batch's report: each item's attempts from the stored records,
the JUnit files its runs wrote, and the log tails of the attempts that did
not pass; ``model.report`` merges them and ``model.junit`` renders them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from batchctl.model import rules
from batchctl.model.junit import Case, Refused, parse_junit
from batchctl.model.report import AttemptInput, ItemInput, Report, build_report
from batchctl.model.viewdoc import BatchReading, Stored, run_document
from batchctl.transports.artifacts import Unreadable, read_capped, xml_files
from batchctl.transports.logs import tail_text

# Lines of a failed attempt's log the report carries, as the CI log shows.
TAIL_LINES = 30


def _junit_of(
    artifacts: Path, warn: Callable[[str], None]
) -> tuple[tuple[Case, ...] | None, tuple[str, ...]]:
    """The test cases of every JUnit file in a run's artifacts, and those
    files; None if it wrote no JUnit. XML that is not JUnit is left out
    quietly; a file that cannot be read or parsed, with a warning."""
    cases: list[Case] = []
    files: list[str] = []
    for path in xml_files(artifacts, warn=warn):
        try:
            parsed = parse_junit(read_capped(path))
        except (Unreadable, Refused) as exc:
            message = str(exc) if isinstance(exc, Unreadable) else f"{path} {exc}"
            warn(f"{message}; left out of the report")
            continue
        if parsed is not None:
            cases.extend(parsed)
            files.append(str(path))
    return (tuple(cases) if files else None), tuple(files)


def _attempt(
    reading: BatchReading,
    number: int,
    run_id: str,
    run: Stored | None,
    warn: Callable[[str], None],
) -> AttemptInput:
    if run is None:
        # Its record is gone (runs.json removed by hand): the view calls the
        # item interrupted; so does the report, saying why.
        return AttemptInput(
            attempt=number,
            run_id=run_id,
            machine=None,
            status="interrupted",
            error_code="run_missing",
            message=f"its run {run_id} is not in runs.json",
        )
    document = run_document(run, reading.runs_prefix)
    status = document["status"]
    cases: tuple[Case, ...] | None = None
    files: tuple[str, ...] = ()
    # A run still going may be writing its report: only ended runs are read.
    if status in rules.TERMINAL_STATUSES:
        cases, files = _junit_of(Path(document["artifacts_path"]), warn)
    return AttemptInput(
        attempt=run.get("attempt", number),
        run_id=run_id,
        machine=run.get("machine"),
        status=status,
        exit_code=document["exit_code"],
        error_code=document["error_code"],
        message=document["message"],
        started_at=document["started_at"],
        ended_at=document["ended_at"],
        log_path=document["log_path"],
        artifacts_path=document["artifacts_path"],
        log_tail=None
        if status == rules.SUCCEEDED
        else tail_text(Path(document["log_path"]), TAIL_LINES),
        cases=cases,
        junit_files=files,
    )


def gather_report(reading: BatchReading) -> Report:
    """The report of a batch as stored now: O(items + attempts), plus the
    JUnit files and failed logs read."""
    warnings: list[str] = []
    items = []
    for name, entry in reading.entries.items():
        item = reading.items[name]
        document = reading.item_document(name)
        attempts = tuple(
            _attempt(reading, number, run_id, reading.runs.get(run_id), warnings.append)
            for number, run_id in enumerate(reading.attempt_run_ids(item), start=1)
        )
        items.append(
            ItemInput(
                name=name,
                selector=entry["selector"],
                state=document["state"],
                outcome=document["outcome"],
                final=reading.is_final(entry, item),
                error_code=document["error_code"],
                blame=document["blame"],
                reason=document["reason"],
                attempts=attempts,
                needs=tuple(entry.get("needs") or ()),
            )
        )
    batch = reading.batch
    return build_report(
        batch_id=batch["id"],
        source=batch["source"],
        staging=batch["staging"],
        done=reading.done(),
        items=items,
        warnings=warnings,
    )
