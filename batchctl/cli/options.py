"""Options every command shares, declared once."""

from typing import Annotated

import typer

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout (errors as JSON on stderr)."),
]
StateDirOption = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        help="State directory (default: $BATCHCTL_STATE_DIR, else $XDG_STATE_HOME/batchctl).",
        show_default=False,
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print no progress or remarks.")]
FleetOption = Annotated[
    str | None,
    typer.Option(
        "--fleet",
        help="Fleet file (default: $BATCHCTL_FLEET, else <state-dir>/fleet.yaml, else this host).",
        show_default=False,
    ),
]
BatchIdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Batch id (or a unique prefix of 4+ characters).")
]
