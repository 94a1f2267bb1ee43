"""The fleet command, and the hidden commands of detached processes."""

import os
import select
import socket
import sys
import time
from typing import Annotated

import typer

from batchctl.cli.context import load_settings, open_dispatcher, open_service
from batchctl.cli.options import FleetOption, JsonOption, StateDirOption
from batchctl.cli.output import Output
from batchctl.engine.worker import LEASE_TOKEN_VARIABLE, run_worker
from batchctl.model.clock import SystemClock
from batchctl.model.errors import ExitCode, InvalidInput
from batchctl.model.fleet import Machine
from batchctl.model.views import MachineList
from batchctl.transports.executor import ExecutorSettings, execute_run
from batchctl.transports.runners import make_runner

machines_app = typer.Typer(
    help="List the fleet; drain and resume machines.",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@machines_app.callback()
def machines(
    ctx: typer.Context,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """List the fleet: each machine's tags, slots, state (drained or
    quarantined, with its reason) and the runs it holds, and the pools."""
    if ctx.invoked_subcommand is not None:
        given = [
            name
            for name, value in (
                ("--json", json_output),
                ("--state-dir", state_dir),
                ("--fleet", fleet),
            )
            if value
        ]
        if given:
            # Said before the subcommand they would be the listing's, not its:
            # a drain in another state dir than meant must not pass quietly.
            raise InvalidInput(
                f"{', '.join(given)} goes after `machines {ctx.invoked_subcommand}`, "
                f"e.g. batchctl machines {ctx.invoked_subcommand} NAME {given[0]} ...",
                details={"usage": True},
            )
        return ExitCode.OK
    # Imported here, as in every command: the tables (and rich) load only in
    # a process that draws one (a worker or an executor never does).
    from batchctl.cli.render import render_machines

    output = Output(json_mode=json_output)
    service = open_service(load_settings(state_dir, fleet))
    listing = MachineList(
        source=service.dispatcher.fleet.source, machines=service.machines(), pools=service.pools()
    )
    output.result(
        listing,
        lambda console: render_machines(console, listing.machines, listing.source, listing.pools),
    )
    return ExitCode.OK


MachineArgument = Annotated[str, typer.Argument(metavar="NAME", help="A machine of the fleet.")]


@machines_app.command("drain")
def drain(
    name: MachineArgument,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, as `machines` shows it (kept with the drain).")
    ],
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Finish what NAME runs, and give it nothing new, for every batch."""
    from batchctl.cli.render import render_drain

    output = Output(json_mode=json_output)
    result = open_service(load_settings(state_dir, fleet)).drain(name, reason=reason)
    output.result(result, lambda console: render_drain(console, result))
    return ExitCode.OK


@machines_app.command("resume")
def resume(
    name: MachineArgument,
    json_output: JsonOption = False,
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Give a drained or quarantined machine work again, from the workers'
    next step (a quarantine ends without waiting for its health check)."""
    from batchctl.cli.render import render_drain

    output = Output(json_mode=json_output)
    result = open_service(load_settings(state_dir, fleet)).resume(name)
    output.result(result, lambda console: render_drain(console, result))
    return ExitCode.OK


def batch_worker(
    batch_id: Annotated[str, typer.Argument(metavar="ID")],
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Backfill the batch's queued items onto idle machines until it is done."""
    dispatcher = open_dispatcher(load_settings(state_dir, fleet), long_lived=True)

    def log(line: str) -> None:
        print(line, flush=True)

    handed_token = os.environ.pop(LEASE_TOKEN_VARIABLE, None)

    def wait(fds: list[int], timeout: float) -> None:
        if fds:
            select.select(fds, [], [], timeout)
        else:
            time.sleep(timeout)

    return run_worker(batch_id, dispatcher, wait=wait, log=log, handed_token=handed_token)


def run_executor(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID")],
    state_dir: StateDirOption = None,
    fleet: FleetOption = None,
) -> int:
    """Execute one prepared run and record its outcome."""
    settings = load_settings(state_dir, fleet)
    dispatcher = open_dispatcher(settings)
    clock = SystemClock()
    grace = settings.tuning.kill_grace_s

    def machine_of(name: str) -> Machine:
        machine = dispatcher.fleet.get(name)
        if machine is None:
            raise LookupError(name)
        return machine

    run = execute_run(
        run_id,
        runs=dispatcher.runs,
        batches=dispatcher.batches,
        clock=clock,
        settings=ExecutorSettings(kill_grace_s=grace, heartbeat_s=settings.tuning.heartbeat_s),
        machine_of=machine_of,
        env_pass_for=dispatcher.fleet.env_pass_for,
        snapshots=dispatcher.snapshots,
        make_runner=lambda run, entry, machine, env: make_runner(
            run, entry, machine, env, state_dir=settings.state_dir, kill_grace_s=grace
        ),
    )
    print(f"{socket.gethostname()}: run {run.id} is {run.status.value}", file=sys.stderr)
    return ExitCode.OK
