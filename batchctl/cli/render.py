"""Human-readable tables. Pure functions of a view and a console."""

from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchctl.engine.service import (
    DrainResult,
    DryRunResult,
    PruneResult,
    RetryResult,
    SubmitResult,
)
from batchctl.model.clock import utc_iso
from batchctl.model.ordering import DEFAULT_PRIORITY
from batchctl.model.views import (
    BatchSummary,
    BatchView,
    ItemDetail,
    ItemView,
    MachineView,
    PoolView,
)

OUTCOME_STYLE = {
    "passed": "green",
    "failed": "red",
    "error": "red",
    "timeout": "red",
    "interrupted": "yellow",
    "skipped": "yellow",
    "running": "cyan",
    "queued": "",
    "waiting": "dim",
}


def _row(table: Table, *cells: str | Text) -> None:
    """A table row whose strings are shown as they are: rich would read
    ``test[py=3.11]`` (an item of a matrix) as markup and print ``test``."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def counts_line(counts: dict[str, int]) -> str:
    return (
        ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items())) or "no items"
    )


def _detail(item: ItemView) -> str:
    """One short line: why it was skipped, how it ended, or why it waits."""
    if item.error_code:
        return item.error_code + (f" ({item.blame})" if item.blame else "")
    run = item.run
    if run is None or item.state == "queued":
        return item.reason or ""
    parts = []
    if run.error_code:
        parts.append(f"{run.error_code}: {run.message or ''}".strip())
    elif run.exit_code not in (None, 0):
        parts.append(f"exit {run.exit_code}")
    elif run.message:
        parts.append(run.message)
    if run.started_at is not None and run.ended_at is not None:
        parts.append(f"took {(run.ended_at - run.started_at).total_seconds():.1f}s")
    return ", ".join(parts)


def batch_table(view: BatchView, title: str | None = None, *, fold_detail: bool = True) -> Table:
    """``fold_detail``: long details take more lines; without, they are cut
    (the live table must keep one line per row to fit the screen)."""
    table = Table(
        show_edge=False,
        pad_edge=False,
        box=None,
        header_style="bold",
        title=title,
        title_justify="left",
    )
    table.add_column("ITEM", no_wrap=True)
    table.add_column("OUTCOME", no_wrap=True)
    table.add_column("TRY", justify="right")
    table.add_column("MACHINE", no_wrap=True)
    table.add_column("SELECTOR", no_wrap=True)
    table.add_column(
        "DETAIL", overflow="fold" if fold_detail else "ellipsis", no_wrap=not fold_detail
    )
    for item in view.items:
        _row(
            table,
            item.name,
            Text(item.outcome, style=OUTCOME_STYLE.get(item.outcome, "")),
            str(item.attempt),
            item.machine or "-",
            item.selector,
            _detail(item),
        )
    return table


TABLE_HEADERS = ("ITEM", "OUTCOME", "TRY", "MACHINE", "SELECTOR", "DETAIL")


def plain_table_lines(view: BatchView) -> list[str]:
    """The batch table as aligned plain text: what a log or a pipe gets. A
    rich table of 1,000 rows costs most of a second; these lines cost
    milliseconds, and names are never read as markup."""
    rows = [
        (
            item.name,
            item.outcome,
            str(item.attempt),
            item.machine or "-",
            item.selector,
            _detail(item),
        )
        for item in view.items
    ]
    widths = [
        max(len(header), *(len(row[column]) for row in rows))
        for column, header in enumerate(TABLE_HEADERS[:-1])
    ]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            cell.rjust(width) if column == 2 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [line(TABLE_HEADERS), *(line(row) for row in rows)]


def render_batch(console: Console, view: BatchView) -> None:
    state = "cancelled" if view.cancelled else ("done" if view.done else "in progress")
    console.print(f"batch    {view.id}  ({state})", markup=False)
    console.print(f"staging  {view.staging or '-'}", markup=False)
    console.print(f"plan     {view.source}  sha256:{view.plan_hash[:12]}", markup=False)
    console.print(f"created  {_when(view.created_at)} by {view.created_by}", markup=False)
    if view.priority != DEFAULT_PRIORITY:
        console.print(
            f"priority {view.priority} (its weight in the fleet's fair share)", markup=False
        )
    console.print()
    if console.is_terminal:
        console.print(batch_table(view))
    else:
        console.file.write("\n".join(plain_table_lines(view)) + "\n")
    console.print()
    console.print(f"{view.expected_count} items: {counts_line(view.counts)}", markup=False)
    if view.eta_s is not None and view.eta is not None:
        console.print(
            f"ETA      {_when(view.eta)} (about {duration(view.eta_s)} left, "
            "from earlier runs of the same items)",
            markup=False,
        )


def render_submit(console: Console, result: SubmitResult) -> None:
    verb = "resumed" if result.resumed else "created"
    console.print(f"{verb} batch {result.batch.id}", markup=False)
    render_batch(console, result.batch)


def _first_few(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _needs_shown(needs: list[str], items_of: dict[str, list[str]]) -> str:
    """``needs`` with every item of one matrix or dirs entry written once, as
    ``test (all 6)``: a dependent of an expanded entry needs each of its
    items, and a row naming them all says nothing more."""
    shown: list[str] = []
    listed = set(needs)
    done: set[str] = set()
    for need in needs:
        base = need.partition("[")[0]
        every = items_of.get(base)
        if every is not None and len(every) > 1 and listed.issuperset(every):
            if base not in done:
                done.add(base)
                shown.append(f"{base} (all {len(every)})")
        else:
            shown.append(need)
    return ", ".join(shown)


def render_dry_run(console: Console, result: DryRunResult) -> None:
    console.print(f"plan     {result.source}  sha256:{result.plan_hash}", markup=False)
    console.print(f"staging  {result.staging or '-'}", markup=False)
    resume = (
        f"would resume batch {result.would_resume}"
        if result.would_resume
        else "would create a new batch"
    )
    console.print(
        f"dry run: valid plan, {len(result.items)} items; {resume}; nothing written", markup=False
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("ITEM", "DIR", "SELECTOR", "NEEDS", "TIMEOUT", "RETRIES", "RUNS ON"):
        table.add_column(column, no_wrap=column not in ("NEEDS", "RUNS ON"), overflow="fold")
    items_of: dict[str, list[str]] = {}
    for item in result.items:
        if "[" in item.name:
            items_of.setdefault(item.name.partition("[")[0], []).append(item.name)
    for item in result.items:
        runs_on = f"never: {item.would_skip}" if item.would_skip else _first_few(item.machines)
        _row(
            table,
            item.name,
            item.dir,
            item.selector,
            _needs_shown(item.needs, items_of) or "-",
            f"{item.timeout_s}s",
            f"{item.retries} on {'/'.join(item.retry_on)}",
            runs_on,
        )
    console.print()
    console.print(table)


def render_list(console: Console, summaries: list[BatchSummary]) -> None:
    if not summaries:
        console.print("no batches yet")
        return
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("BATCH", "CREATED", "STAGING", "STATE", "OUTCOMES", "SOURCE"):
        table.add_column(column, no_wrap=column not in ("OUTCOMES", "SOURCE"))
    for summary in summaries:
        _row(
            table,
            summary.id,
            _when(summary.created_at),
            summary.staging or "-",
            summary.state,
            counts_line(summary.counts),
            summary.source,
        )
    console.print(table)


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def render_prune(console: Console, result: PruneResult) -> None:
    if not result.removed and not result.kept:
        console.print(
            f"nothing to prune: no batch was created before {_when(result.created_before)}",
            markup=False,
        )
        return
    verb = "would remove" if result.dry_run else "removed"
    console.print(
        f"{verb} {_count(len(result.removed), 'batch', 'batches')} created before "
        f"{_when(result.created_before)} ({_count(result.runs_removed, 'run', 'runs')})"
        + ("; dry run, nothing changed" if result.dry_run else ""),
        markup=False,
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("BATCH", "ACTION", "REASON"):
        table.add_column(column, no_wrap=column != "REASON", overflow="fold")
    for batch_id in result.removed:
        _row(table, batch_id, verb, "finished")
    for kept in result.kept:
        _row(table, kept.id, "kept", kept.reason)
    console.print()
    console.print(table)


def render_machines(
    console: Console, machines: list[MachineView], source: str, pools: list[PoolView] | None = None
) -> None:
    console.print(f"fleet: {source}", markup=False)
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in (
        "MACHINE",
        "SOURCE",
        "TRANSPORT",
        "HOST",
        "OS",
        "TAGS",
        "SLOTS",
        "STATE",
        "RUNS",
    ):
        table.add_column(column, no_wrap=column != "RUNS", overflow="fold")
    for machine in machines:
        _row(
            table,
            machine.name,
            machine.source,
            machine.transport,
            machine.host or "-",
            machine.os,
            ", ".join(machine.tags) or "-",
            f"{len(machine.runs)}/{machine.slots}",
            _machine_state(machine),
            ", ".join(f"{r.batch_id}/{r.item} ({r.status})" for r in machine.runs) or "-",
        )
    console.print(table)
    for machine in machines:
        if machine.nodes_error:
            console.print(f"{machine.name}: nodes unknown: {machine.nodes_error}", markup=False)
        elif machine.nodes is not None:
            console.print(f"{machine.name}: {len(machine.nodes)} nodes", markup=False)
            for node in machine.nodes:
                features = ",".join(node.features) or "-"
                console.print(
                    f"  {node.name}  {node.state}  features {features}  cpus a/i/o/t {node.cpus}",
                    markup=False,
                )
    for pool in pools or []:
        standing = ", ".join(f"{name} {state}" for name, state in pool.machines.items())
        trouble = f"; {pool.failed} failed" if pool.failed else ""
        last = f"; last error: {pool.last_error}" if pool.last_error else ""
        console.print(
            f"pool {pool.name} ({', '.join(pool.tags) or '-'}): {len(pool.machines)} of "
            f"{pool.min}..{pool.max} machines{': ' + standing if standing else ''}{trouble}{last}",
            markup=False,
        )


def _machine_state(machine: MachineView) -> str:
    """The STATE column: drained or quarantined with why; a machine with
    failures counted says how many."""
    if machine.drain:
        return f"drained: {machine.drain.reason}"
    health = machine.health
    if health is None:
        return machine.state
    quarantine = health.quarantine
    if quarantine is not None:
        last = f"; last check: {quarantine.last_check}" if quarantine.last_check else ""
        return (
            f"quarantined: {quarantine.reason}; next health check "
            f"{utc_iso(quarantine.next_check_at)}{last}"
        )
    failures = f"{health.failures} infrastructure failure{'s' if health.failures != 1 else ''}"
    held = f"; {health.held_back}" if health.held_back else ""
    return f"{machine.state} ({failures} in a row{held})"


def render_drain(console: Console, result: DrainResult) -> None:
    runs = f"{result.running} run{'s' if result.running != 1 else ''}"
    if result.drained:
        again = "" if result.changed else " (it was already; reason updated)"
        reason = result.drain.reason if result.drain else ""
        holds = f"it finishes its {runs}" if result.running else "it holds no run"
        console.print(
            f"drained {result.machine}{again}: {reason}; {holds} and takes no new one",
            markup=False,
        )
    elif result.changed:
        lifted = " (its quarantine ended)" if result.unquarantined else ""
        console.print(f"resumed {result.machine}{lifted}: it takes work again", markup=False)
    else:
        console.print(
            f"{result.machine} was not drained or quarantined; nothing changed", markup=False
        )


def render_retry(console: Console, result: RetryResult) -> None:
    if result.requeued:
        console.print(f"re-queued: {', '.join(result.requeued)}", markup=False)
    else:
        console.print("nothing to retry: every finished item passed", markup=False)
    render_batch(console, result.batch)


def render_item(console: Console, item: ItemDetail) -> None:
    lines = [
        ("item", f"{item.name}  (batch {item.batch_id})"),
        ("outcome", item.outcome + (f" ({item.error_code})" if item.error_code else "")),
        ("dir", item.dir),
        ("selector", item.selector),
        ("needs", ", ".join(item.needs) or "-"),
        (
            "policy",
            f"timeout {item.timeout_s}s, {item.retries} retries on {'/'.join(item.retry_on)}",
        ),
        ("attempt", str(item.attempt)),
    ]
    if item.blame:
        lines.append(("blame", f"{item.blame} did not pass"))
    if item.reason:
        lines.append(("reason", item.reason))
    for label, value in lines:
        console.print(f"{label:9}{value}", markup=False)
    if not item.attempts:
        return
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("TRY", "RUN", "MACHINE", "STATUS", "EXIT", "STARTED", "ENDED", "MESSAGE"):
        table.add_column(column, no_wrap=column != "MESSAGE", overflow="fold")
    for attempt in item.attempts:
        _row(
            table,
            str(attempt.attempt),
            attempt.id,
            attempt.machine,
            attempt.status,
            "-" if attempt.exit_code is None else str(attempt.exit_code),
            _when(attempt.started_at),
            _when(attempt.ended_at),
            attempt.error_code or attempt.message or "",
        )
    console.print()
    console.print(table)
    console.print()
    console.print(f"log      {item.attempts[-1].log_path}", markup=False)
