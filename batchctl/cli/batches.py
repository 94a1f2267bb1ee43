"""Commands about batches: run, status, list."""

from typing import Annotated

import typer

from batchctl.cli.context import load_settings, open_service
from batchctl.cli.options import JsonOption, QuietOption, StateDirOption
from batchctl.cli.output import Output
from batchctl.cli.render import render_batch, render_dry_run, render_list, render_submit
from batchctl.core.errors import ExitCode
from batchctl.core.plan import load_plan
from batchctl.core.views import BatchList


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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would run; write nothing.")
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """Create the batch for PLAN and STAGING, or resume it if it exists."""
    output = Output(json_mode=json_output, quiet=quiet)
    settings = load_settings(state_dir)
    loaded = load_plan(plan, env_tag=settings.env_tag)
    service = open_service(settings)
    if dry_run:
        preview = service.dry_run(loaded, staging=staging)
        output.result(preview, lambda console: render_dry_run(console, preview))
        return ExitCode.OK
    result = service.submit(loaded, staging=staging, force_new=new)
    output.result(result, lambda console: render_submit(console, result))
    return ExitCode.OK


def status(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="Batch id (or a unique prefix).")],
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """Show a batch: every item's decision joined with its latest run."""
    output = Output(json_mode=json_output)
    view = open_service(load_settings(state_dir)).status(batch_id)
    output.result(view, lambda console: render_batch(console, view))
    return ExitCode.OK


def list_batches(
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
) -> int:
    """List batches, newest first, with counts per outcome."""
    output = Output(json_mode=json_output)
    summaries = open_service(load_settings(state_dir)).list_batches()
    listing = BatchList(batches=summaries)
    output.result(listing, lambda console: render_list(console, summaries))
    return ExitCode.OK
