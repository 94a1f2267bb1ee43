"""The report command: a batch as one JUnit XML file, a markdown summary
and/or a self-contained HTML page."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchctl.cli.context import load_settings, open_service
from batchctl.cli.options import BatchIdArgument, JsonOption, QuietOption, StateDirOption
from batchctl.cli.output import Output
from batchctl.model.errors import ExitCode, InvalidInput, OutputUnwritable
from batchctl.state.journal import fsync_dir
from batchctl.transports.umask import users_file_mode

if TYPE_CHECKING:
    from rich.console import Console

    from batchctl.model.report import Report

JunitOption = Annotated[
    str | None,
    typer.Option(
        "--junit",
        metavar="FILE",
        help="Write the batch as one JUnit XML file: a test suite per item, every attempt merged.",
        show_default=False,
    ),
]
MarkdownOption = Annotated[
    str | None,
    typer.Option(
        "--markdown",
        metavar="FILE",
        help="Write a markdown summary: counts, and the failed, flaky and skipped items.",
        show_default=False,
    ),
]


HtmlOption = Annotated[
    str | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help="Write one self-contained HTML page: summary, timeline, needs with the critical "
        "path, the items, failed logs' tails.",
        show_default=False,
    ),
]

WatchOption = Annotated[
    bool,
    typer.Option(
        "--watch",
        help="With --html: write the files again every --interval seconds until the batch is "
        "finished; the page reloads itself meanwhile.",
    ),
]
IntervalOption = Annotated[
    float,
    typer.Option(
        "--interval",
        metavar="SECONDS",
        min=0.1,
        max=86_400.0,  # a day; also refuses inf, which no page reloads by
        help="With --watch: seconds between two writes (and the page's reloads).",
    ),
]

OPTIONS = ("--junit", "--markdown", "--html")


def report(
    batch_id: BatchIdArgument,
    junit: JunitOption = None,
    markdown: MarkdownOption = None,
    html: HtmlOption = None,
    watch: WatchOption = False,
    interval: IntervalOption = 5.0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """Write a batch's report: JUnit XML for CI test views, markdown or HTML for people.

    Exits 0 once the files are written, whatever the batch's outcome (run
    --wait or status --wait exit by that)."""
    # Imported here: every command loads this module, only this one needs XML.
    from batchctl.model.report import render_junit, render_markdown

    targets = _targets({"--junit": junit, "--markdown": markdown, "--html": html})
    if watch and html is None:
        raise InvalidInput(
            "--watch rewrites an HTML page: it needs --html FILE",
            details={"usage": True, "options": ["--watch", "--html"]},
        )
    output = Output(json_mode=json_output, quiet=quiet)
    settings = load_settings(state_dir)
    service = open_service(settings)

    def render(built: Report, option: str, path: Path) -> bytes:
        if option == "--junit":
            return render_junit(built)
        if option == "--markdown":
            return render_markdown(built).encode()
        from batchctl.model.report_html import render_html

        return render_html(
            built,
            now=service.clock.now(),
            link_base=_inside(path.parent, settings.state_dir),
            # Only a page that will be written again reloads itself.
            reload_s=interval if watch and not built.done else None,
        ).encode()

    def write(built: Report) -> None:
        _write_all(
            {option: (path, render(built, option, path)) for option, path in targets.items()}
        )

    if watch:
        built = service.watch_report(batch_id, on_report=write, interval_s=interval)
    else:
        built = service.report(batch_id)
        write(built)
    for warning in built.warnings:
        sys.stderr.write(f"batchctl: warning: {warning}\n")
    if not built.done:
        sys.stderr.write(
            f"batchctl: warning: batch {built.batch_id} is not finished; its unfinished items "
            f"are reported as errors (type not_finished). To wait for its end first: "
            f"batchctl status {built.batch_id} --wait\n"
        )
    written = {option: str(path) for option, path in targets.items()}
    output.result(
        _document(built, written), lambda console: _render(console, built, written, quiet=quiet)
    )
    return ExitCode.OK


def _targets(values: dict[str, str | None]) -> dict[str, Path]:
    """Which files to write, by option, as absolute paths (what the answer
    names). Checked before the batch is read."""
    targets = {option: Path(value).absolute() for option, value in values.items() if value}
    if not targets:
        raise InvalidInput(
            "report needs --junit FILE, --markdown FILE or --html FILE (or several)",
            details={"usage": True, "options": list(OPTIONS)},
        )
    seen: dict[str, str] = {}
    for option, path in targets.items():
        real = os.path.realpath(path)
        if real in seen:
            raise InvalidInput(
                f"{seen[real]} and {option} name the same file {values[option]}",
                details={"usage": True, "file": values[option]},
            )
        seen[real] = option
    for option, path in targets.items():
        if path.is_dir():
            raise OutputUnwritable(
                f"{option} {path}: cannot write the report there: it is a directory",
                details={"option": option, "file": str(path)},
            )
    return targets


def _inside(directory: Path, state_dir: Path) -> str | None:
    """``directory`` spelt under the state directory as the runs' paths are,
    if it is inside it (the HTML then links logs relatively, so the state
    directory can be moved or served whole); None otherwise."""
    real_state = Path(os.path.realpath(state_dir))
    real_dir = Path(os.path.realpath(directory))
    if real_dir != real_state and real_state not in real_dir.parents:
        return None
    return str(state_dir.absolute() / real_dir.relative_to(real_state))


def _unwritable(option: str, path: Path, exc: OSError) -> OutputUnwritable:
    if exc.errno == errno.ENOENT and not path.parent.is_dir():
        reason = f"the directory {path.parent} does not exist"
    elif exc.errno == errno.ENOSPC:
        reason = "the disk is full"
    else:
        reason = exc.strerror or str(exc)
    return OutputUnwritable(
        f"{option} {path}: cannot write the report: {reason}; nothing was written",
        details={"option": option, "file": str(path), "errno": exc.errno},
    )


def _write_all(files: dict[str, tuple[Path, bytes]]) -> None:
    """Every file or none, as far as renames go: each is written whole to a
    temporary file beside it and synced, then all are moved into place (``os.replace``: a reader
    never sees half a report, and a report that cannot be written leaves
    the other one unwritten too). They get the user's umask, not batchctl's
    private one: a CI job uploads them."""
    mode = users_file_mode()
    staged: list[tuple[str, str, Path]] = []
    try:
        for option, (path, payload) in files.items():
            try:
                fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as exc:
                raise _unwritable(option, path, exc) from None
            staged.append((option, temp, path))
            try:
                with open(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fchmod(out.fileno(), mode)
                    os.fsync(out.fileno())
            except OSError as exc:
                raise _unwritable(option, path, exc) from None
        placed: list[str] = []
        for option, temp, path in staged:
            try:
                os.replace(temp, path)
                fsync_dir(path.parent)
            except OSError as exc:
                error = _unwritable(option, path, exc)
                if placed:
                    # The rename of a file already synced beside it failed
                    # after another was moved into place: say which.
                    error.message = error.message.replace(
                        "nothing was written", f"only {', '.join(placed)} was written"
                    )
                raise error from None
            placed.append(str(path))
    finally:
        for _, temp, _ in staged:
            Path(temp).unlink(missing_ok=True)


def _document(built: Report, written: dict[str, str]) -> dict[str, Any]:
    return {
        "batch_id": built.batch_id,
        "done": built.done,
        "written": {
            "junit": written.get("--junit"),
            "markdown": written.get("--markdown"),
            "html": written.get("--html"),
        },
        "tests": built.totals.document(),
        "items": {"total": len(built.items), **built.item_results()},
        "warnings": list(built.warnings),
    }


def _render(console: Console, built: Report, written: dict[str, str], *, quiet: bool) -> None:
    if quiet:
        return
    from batchctl.model.junit import format_seconds

    for path in written.values():
        console.print(f"wrote {path}", markup=False)
    totals = built.totals
    results = ", ".join(f"{count} {result}" for result, count in built.item_results().items())
    console.print(
        f"batch {built.batch_id}: {len(built.items)} items ({results}); "
        f"{totals.tests} tests: {totals.failures} failed, {totals.errors} errors, "
        f"{totals.skipped} skipped, {totals.flaky} flaky, {format_seconds(totals.time_ms)}s",
        markup=False,
    )
