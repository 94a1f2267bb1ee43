"""Commands about batches: run, status, list, cancel, retry, logs, prune."""

import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchctl.cli.context import load_settings, open_service
from batchctl.cli.events import failure_report, github_annotations, github_summary
from batchctl.cli.options import (
    BatchIdArgument,
    FleetOption,
    JsonOption,
    QuietOption,
    StateDirOption,
)
from batchctl.cli.output import Output
from batchctl.engine.service import BatchService, LogTarget, SubmitResult
from batchctl.model.age import parse_age
from batchctl.model.errors import ExitCode, Interrupted, InvalidInput, NotFound
from batchctl.model.ordering import DEFAULT_PRIORITY, MAX_PRIORITY
from batchctl.model.plan import load_plan, parse_duration
from batchctl.model.viewdoc import Document
from batchctl.transports.logs import follow_log, tail_offset

if TYPE_CHECKING:
    from rich.console import Console

# How often a waiting command looks at the batch at most: often enough to
# report the end promptly. Large batches are looked at less often (a look
# costs O(items); see BatchService.wait).
WAIT_POLL_S = 0.05

WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Follow the batch to the end; exit 1 unless every item passed."),
]


def _wait(
    service: BatchService, output: Output, batch_id: str, item: str | None = None
) -> Document:
    # The live table (and rich) loads once the batch runs, not before.
    from batchctl.cli.progress import Progress

    console = output.stderr if output.json_mode else output.stdout
    try:
        with Progress(
            console,
            quiet=output.quiet,
            now=service.clock.now,
            expected=lambda: service.expected_durations(batch_id),
        ) as progress:
            document = service.wait(
                batch_id, on_progress=progress.update, poll_s=WAIT_POLL_S, item=item
            )
    except (KeyboardInterrupt, Interrupted):
        sys.stderr.write(
            f"batchctl: stopped waiting; the worker carries on (batchctl status {batch_id})\n"
        )
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    if item is None:
        _report_the_end(console, document, quiet=output.quiet)
    return document


def _report_the_end(console: "Console", document: Document, *, quiet: bool) -> None:
    """For a CI log: each failed item's log tail, where its log and
    artifacts are; under GitHub Actions, error annotations and the step
    summary. A terminal has the table for that."""
    if quiet:
        return
    if not console.is_terminal:
        for line in failure_report(document):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in github_annotations(document):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with Path(summary).open("a", encoding="utf-8") as out:
                out.write(github_summary(document))
        except OSError as exc:
            sys.stderr.write(f"batchctl: cannot write the step summary {summary}: {exc.strerror}\n")


def _waited_exit_code(view: Document) -> int:
    all_passed = all(item["outcome"] == "passed" for item in view["items"])
    return int(ExitCode.OK if all_passed else ExitCode.NOT_ALL_PASSED)


def _duration_option(name: str, value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidInput(f"{name}: {exc}", details={"option": name}) from None


def run(
    plan: Annotated[str, typer.Argument(help="Plan file (YAML), or - to read it from stdin.")],
    staging: Annotated[
        str,
        typer.Option(
            "--staging",
            envvar="BATCHCTL_STAGING",
            help="Label of what is under test (build id, commit, URL).",
        ),
    ] = "",
    new: Annotated[
        bool, typer.Option("--new", help="Create a fresh batch even if one exists.")
    ] = False,
    queue_timeout: Annotated[
        str,
        typer.Option(
            "--queue-timeout",
            help="Skip items no matching machine takes within this time (90s, 10m, 24h).",
        ),
    ] = "24h",
    max_parallel: Annotated[
        int | None,
        typer.Option(
            "--max-parallel",
            min=1,
            help="At most N runs of this batch at once (kept with the batch).",
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            min=1,
            max=MAX_PRIORITY,
            help="Weight in the fleet's fair share: a batch of priority 3 gets 3 slots "
            "for every 1 of a priority-1 batch while both wait (default 1; kept with "
            "the batch).",
        ),
    ] = None,
    wait: WaitOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would run; write nothing.")
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Create the batch for PLAN and STAGING, or resume it if it exists."""
    # The tables (and rich) are imported where they are drawn: after the
    # batch's first items have started, not before.
    output = Output(json_mode=json_output, quiet=quiet)
    settings = load_settings(state_dir, fleet)
    queue_timeout_s = _duration_option("--queue-timeout", queue_timeout)
    loaded = load_plan(plan, env_tag=settings.env_tag)
    service = open_service(settings)
    if dry_run:
        from batchctl.cli.render import render_dry_run

        preview = service.dry_run(loaded, staging=staging)
        skipped = {item.name: item.would_skip for item in preview.items if item.would_skip}
        if not skipped:
            output.result(preview, lambda console: render_dry_run(console, preview))
            return ExitCode.OK
        if not output.json_mode:
            render_dry_run(output.stdout, preview)
        # Items that could never run: refused now, rather than skipped later.
        # The first few, in the message: a glob of thousands of directories
        # must not make a message of thousands of names (details list them all).
        shown = [f"{name} ({code})" for name, code in itertools.islice(skipped.items(), 20)]
        more = f" and {len(skipped) - len(shown)} more" if len(skipped) > len(shown) else ""
        reasons = ", ".join(shown) + more
        raise InvalidInput(
            f"{plan}: {len(skipped)} of {len(preview.items)} items would be skipped: {reasons}",
            details={"file": plan, "would_skip": skipped},
        )
    submitted = service.submit(
        loaded,
        staging=staging,
        force_new=new,
        queue_timeout_s=queue_timeout_s,
        max_parallel=max_parallel,
        priority=DEFAULT_PRIORITY if priority is None else priority,
    )
    batch_id, resumed, changed = submitted.batch_id, submitted.resumed, submitted.changed_since
    kept = submitted.priority
    if resumed and priority is not None and priority != kept:
        output.note(
            f"batch {batch_id} keeps the priority it was made with, {kept}: a resume does not "
            f"change it (--priority {priority}; run --new makes a batch with it)"
        )
    if resumed and max_parallel is not None and max_parallel != submitted.max_parallel:
        held = submitted.max_parallel or "no cap"
        output.note(
            f"batch {batch_id} keeps the cap it was made with, {held}: a resume does not "
            f"change it (--max-parallel {max_parallel}; run --new makes a batch with it)"
        )
    if changed is not None:
        # A few names say what changed; a 10,000-item matrix's would not.
        names = ", ".join(changed.entries[:20]) + (
            f" and {len(changed.entries) - 20} more" if len(changed.entries) > 20 else ""
        )
        output.note(
            f"a new batch: {len(changed.entries)} "
            f"{'entry' if len(changed.entries) == 1 else 'entries'} changed since batch "
            f"{changed.batch}: {names}"
        )
    if not wait:
        from batchctl.cli.render import render_submit

        result = SubmitResult(resumed=resumed, batch=service.view(batch_id), changed_since=changed)
        output.result(result, lambda console: render_submit(console, result))
        if not result.batch.done:
            output.note(f"the batch goes on in the background: batchctl status {batch_id}")
        return ExitCode.OK
    output.note(f"{'resumed' if resumed else 'created'} batch {batch_id}")
    final = _wait(service, output, batch_id)
    from batchctl.cli.render import render_batch
    from batchctl.model.views import BatchView

    waited: dict[str, Any] = {
        "resumed": resumed,
        "batch": final,
        "changed_since": changed.model_dump(mode="json") if changed else None,
    }
    output.result(
        waited,
        lambda console: render_batch(console, BatchView.model_validate(final)),
    )
    return _waited_exit_code(final)


def status(
    batch_id: BatchIdArgument,
    item: Annotated[
        str | None, typer.Argument(help="Show this item in full: attempts, runs, blame, reason.")
    ] = None,
    wait: WaitOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Show a batch: every item's decision joined with its latest run."""
    from batchctl.cli.render import render_batch, render_item
    from batchctl.model.views import BatchView

    output = Output(json_mode=json_output, quiet=quiet)
    service = open_service(load_settings(state_dir, fleet))
    if item is not None:
        if wait:
            # That item, not the whole batch: until nothing more will happen to it.
            _wait(service, output, batch_id, item=item)
        detail = service.item_detail(batch_id, item)
        output.result(detail, lambda console: render_item(console, detail))
        if wait and detail.outcome != "passed":
            return ExitCode.NOT_ALL_PASSED
        return ExitCode.OK
    view = _wait(service, output, batch_id) if wait else service.status(batch_id)
    output.result(
        {"batch": view}, lambda console: render_batch(console, BatchView.model_validate(view))
    )
    return _waited_exit_code(view) if wait else ExitCode.OK


LIST_STATES = ("running", "done", "cancelled")


def list_batches(
    staging: Annotated[
        str | None, typer.Option("--staging", help="Only the batches of this staging.")
    ] = None,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only the batches in this state: running, done, cancelled."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many, newest first.")
    ] = None,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """List batches, newest first, with counts per outcome."""
    from batchctl.cli.render import render_list
    from batchctl.model.views import BatchList

    if state is not None and state not in LIST_STATES:
        raise InvalidInput(
            f"--state: {state!r} is not one of {', '.join(LIST_STATES)}",
            details={"option": "--state", "choices": list(LIST_STATES)},
        )
    output = Output(json_mode=json_output)
    summaries = open_service(load_settings(state_dir)).list_batches(
        staging=staging, state=state, limit=limit
    )
    listing = BatchList(batches=summaries)
    output.result(listing, lambda console: render_list(console, summaries))
    return ExitCode.OK


def cancel(
    batch_id: BatchIdArgument,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Stop dispatching, terminate running runs, skip queued items."""
    from batchctl.cli.render import render_batch

    output = Output(json_mode=json_output)
    settings = load_settings(state_dir, fleet)
    service = open_service(settings)
    view = service.cancel(batch_id, settle_s=settings.tuning.kill_grace_s + 10)
    output.result(
        {"batch": view.model_dump(mode="json")}, lambda console: render_batch(console, view)
    )
    return ExitCode.OK


def retry(
    batch_id: BatchIdArgument,
    wait: WaitOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Re-run every item that did not pass (and the dependents skipped because of it)."""
    from batchctl.cli.render import render_batch, render_retry
    from batchctl.model.views import BatchView

    output = Output(json_mode=json_output, quiet=quiet)
    service = open_service(load_settings(state_dir, fleet))
    result = service.retry(batch_id)
    if not wait:
        output.result(result, lambda console: render_retry(console, result))
        return ExitCode.OK
    output.note(f"re-queued: {', '.join(result.requeued) or 'nothing'}")
    final = _wait(service, output, result.batch.id)
    output.result(
        {"requeued": result.requeued, "batch": final},
        lambda console: render_batch(console, BatchView.model_validate(final)),
    )
    return _waited_exit_code(final)


class LogOutput(LogTarget):
    output: str


def logs(
    batch_id: BatchIdArgument,
    item: Annotated[str, typer.Argument(help="Item name.")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing output until the item is final, retries included."
        ),
    ] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="The output of this attempt.")
    ] = None,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, help="Only the last N lines (then follow).")
    ] = None,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """Print (or follow) the output of an item's latest run, or of one attempt."""
    output = Output(json_mode=json_output)
    service = open_service(load_settings(state_dir))
    target = service.log_target(batch_id, item, wait=follow, poll_s=WAIT_POLL_S, attempt=attempt)
    if target is None:
        raise _no_log(service, batch_id, item)
    if json_output:
        chunks = _log_chunks(service, target, follow=follow, tail=tail)
        text = b"".join(chunks).decode(errors="replace")
        output.result(LogOutput(**target.model_dump(), output=text), lambda console: None)
        return ExitCode.OK
    while True:
        for chunk in _log_chunks(service, target, follow=follow, tail=tail):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if not follow or attempt is not None:
            return ExitCode.OK
        # That run has ended; a retry may follow it: follow the next attempt.
        following = service.log_target(
            batch_id, item, wait=True, poll_s=WAIT_POLL_S, after=target.attempt
        )
        if following is None:
            return ExitCode.OK  # the item is final
        target, tail = following, None
        sys.stdout.flush()
        sys.stdout.buffer.write(f"==> attempt {target.attempt} <==\n".encode())


def _log_chunks(
    service: BatchService, target: LogTarget, *, follow: bool, tail: int | None
) -> Iterator[bytes]:
    path = Path(target.log_path)
    return follow_log(
        path,
        finished=lambda: (not follow) or service.run_finished(target.run_id),
        sleep=time.sleep,
        start=tail_offset(path, tail) if tail is not None else 0,
    )


def _no_log(service: BatchService, batch_id: str, item: str) -> NotFound:
    """Why an item has no log: skipped (and because of what), or not started."""
    detail = service.item_detail(batch_id, item)
    details = {"batch": detail.batch_id, "item": item, "outcome": detail.outcome}
    if detail.outcome == "skipped":
        why = detail.error_code or "skipped"
        if detail.blame:
            why += f", because of {detail.blame}"
        return NotFound(
            f"item {item!r} of batch {detail.batch_id} was skipped ({why}): it never ran, "
            "so it has no log",
            details=details,
        )
    waiting = f": {detail.reason}" if detail.reason else ""
    return NotFound(
        f"item {item!r} of batch {detail.batch_id} has not started yet{waiting}", details=details
    )


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Remove finished batches created longer ago than this (30d, 12h, 90m, 0s).",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; change nothing.")
    ] = False,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """Remove old finished batches with their runs, run directories and worker logs."""
    from batchctl.cli.render import render_prune

    output = Output(json_mode=json_output)
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise InvalidInput(f"--older-than: {exc}", details={"option": "--older-than"}) from None
    result = open_service(load_settings(state_dir)).prune(age, dry_run=dry_run)
    output.result(result, lambda console: render_prune(console, result))
    for failure in result.left_behind:
        sys.stderr.write(f"batchctl: warning: could not delete {failure}\n")
    return ExitCode.OK
