"""The ``batchctl`` command's entry point: answers ``--version`` before
importing anything else, so asking for it costs an interpreter start, not
the whole command line (typer, pydantic, the engine)."""

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from batchctl import __version__

        print(f"batchctl {__version__}")
        return 0
    try:
        from batchctl.cli.app import main as full_main
    except KeyboardInterrupt:  # Ctrl-C while starting up: nothing has begun
        sys.stderr.write("batchctl: interrupted\n")
        return 130
    return full_main(args)
