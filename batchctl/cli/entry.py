"""The ``batchctl`` command's entry point: answers ``--version`` before
importing anything else, so asking for it costs an interpreter start, not
the whole command line (typer, pydantic, the engine)."""

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
        from batchctl.cli.app import main as full_main
    except Interrupted:  # Ctrl-C while starting up: nothing has begun
        sys.stderr.write("batchctl: interrupted\n")
        return int(Interrupted.exit_code)
    return full_main(args)
