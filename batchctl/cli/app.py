"""The batchctl command line: wiring, and the one place errors become exit codes."""

import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from batchctl import __version__
from batchctl.cli import batches, fleet, report
from batchctl.cli.envelope import error_envelope, filtered_by
from batchctl.cli.locations import resolve_state_dir
from batchctl.model.clock import SystemClock
from batchctl.model.errors import BatchctlError, ExitCode, Interrupted, InvalidInput

app = typer.Typer(
    name="batchctl",
    help="Run a plan of test directories across a fleet of machines.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"batchctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Run a plan of test directories across a fleet of machines."""


app.command("run")(batches.run)
app.command("status")(batches.status)
app.command("list")(batches.list_batches)
app.command("cancel")(batches.cancel)
app.command("retry")(batches.retry)
app.command("logs")(batches.logs)
app.command("report")(report.report)
app.command("prune")(batches.prune)
app.add_typer(fleet.machines_app, name="machines")
app.command("_batch-worker", hidden=True)(fleet.batch_worker)
app.command("_run-executor", hidden=True)(fleet.run_executor)


def _report(error: BatchctlError, json_mode: bool) -> int:
    if json_mode:
        sys.stderr.write(error_envelope(error))
    elif isinstance(error, Interrupted):
        sys.stderr.write(f"batchctl: {error.message}\n")
    else:
        sys.stderr.write(f"batchctl: error: {error.message}\n")
    return int(error.exit_code)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(
        "interrupted; whatever was already started goes on in the background (see batchctl list)"
    )


def _option_value(args: list[str], name: str) -> str | None:
    for position, arg in enumerate(args):
        if arg == name and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _write_crash_report(args: list[str]) -> Path | None:
    """Keep the traceback for a bug report; the user sees one line and this
    path. Only ever under the state directory, private (it may quote
    arguments and paths); None if it cannot be written there."""
    stamp = f"{SystemClock().now():%Y%m%d-%H%M%S}"
    text = f"batchctl {__version__}\nargv: {args!r}\n\n{traceback.format_exc()}"
    try:
        directory = resolve_state_dir(_option_value(args, "--state-dir"), os.environ) / "crash"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"batchctl-crash-{stamp}-{os.getpid()}.log"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "w", encoding="utf-8") as report:
            report.write(text)
    except (OSError, RuntimeError):
        return None
    return path


def _take_jq(args: list[str]) -> tuple[list[str], str | None]:
    """``--jq EXPR`` (or ``--jq=EXPR``), which any command with ``--json``
    takes: taken out of the arguments, with ``--json`` put in its place."""
    for position, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--jq" or arg.startswith("--jq="):
            if arg == "--jq":
                if position + 1 >= len(args):
                    raise InvalidInput(
                        "--jq needs a jq program, e.g. --jq '.data.batch.counts'",
                        details={"usage": True},
                    )
                expression, rest = args[position + 1], args[position + 2 :]
            else:
                expression, rest = arg.removeprefix("--jq="), args[position + 1 :]
            kept = [*args[:position], *rest]
            return ([*kept, "--json"] if "--json" not in kept else kept), expression
    return args, None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    json_mode = "--json" in args or any(arg.startswith("--jq") for arg in args)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        args, jq_expression = _take_jq(args)
        # Built inside the handlers: a Ctrl-C while typer builds it is an
        # interruption like any other, not a traceback.
        command = typer.main.get_command(app)
        with filtered_by(jq_expression):
            result = command.main(args=args, prog_name="batchctl", standalone_mode=False)
    except BatchctlError as error:
        return _report(error, json_mode)
    except typer.Abort:
        sys.stderr.write("batchctl: interrupted\n")
        return int(ExitCode.INTERRUPTED)
    except typer.TyperException as error:
        # Usage errors (unknown option, missing argument) are invalid input too.
        usage = InvalidInput(
            f"{error.format_message()} (see 'batchctl --help')", details={"usage": True}
        )
        return _report(usage, json_mode)
    except KeyboardInterrupt:
        sys.stderr.write("batchctl: interrupted\n")
        return int(ExitCode.INTERRUPTED)
    except Exception as error:
        report = _write_crash_report(args)
        sys.stderr.write(f"batchctl: internal error: {type(error).__name__}: {error}\n")
        if report is not None:
            sys.stderr.write(
                f"batchctl: a crash report was written to {report}; "
                "please attach it to a bug report\n"
            )
        else:
            # No state directory to keep it in: shown here, never left in /tmp.
            sys.stderr.write(traceback.format_exc())
        return int(ExitCode.INTERNAL)
    return int(result) if isinstance(result, int) else int(ExitCode.OK)
