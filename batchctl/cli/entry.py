"""The ``batchctl`` command's entry point: answers ``--version``, and
``status ID --json`` of a finished batch (``quick``), before importing
anything else, so they cost an interpreter start and what they read, not the
whole command line (typer, pydantic, the engine)."""

import os
import signal
import sys
from types import FrameType

from batchctl.model.errors import Interrupted


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    # Our own exception, not KeyboardInterrupt: the interpreter treats a
    # KeyboardInterrupt raised inside imports specially (it may end the
    # process by SIGINT even once handled), and this one it does not.
    raise Interrupted("interrupted")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from batchctl import __version__

        print(f"batchctl {__version__}")
        return 0
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        if args[:1] == ["status"]:
            from batchctl.cli.quick import answer

            code = answer(args, os.environ)
            if code is not None:
                return code
        from batchctl.cli.app import main as full_main
    except Interrupted:  # Ctrl-C while starting up or reading: nothing has changed
        sys.stderr.write("batchctl: interrupted\n")
        return int(Interrupted.exit_code)
    return full_main(args)
