"""The ``batchctl`` command's entry point: answers ``--version``, and
``status ID --json`` of a finished batch (``quick``), before importing
anything else, so they cost an interpreter start and what they read, not the
whole command line (typer, pydantic, the engine). ``console`` is what the
installed command runs: private files (``transports.umask``), output that
survives a reader leaving the pipe, and an exit without interpreter
teardown."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import sys
from types import FrameType
from typing import TYPE_CHECKING, NoReturn, TextIO

from batchctl.model.errors import Interrupted
from batchctl.transports.umask import make_files_private

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    # Our own exception, not KeyboardInterrupt: the interpreter treats a
    # KeyboardInterrupt raised inside imports specially (it may end the
    # process by SIGINT even once handled), and this one it does not.
    raise Interrupted("interrupted")


class _Noted:
    """A Ctrl-C while modules load is noted, and acted on once they have
    loaded: raised in the middle of an extension module's initialisation
    (orjson's, say), an exception can crash the interpreter (SIGSEGV)."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from batchctl import __version__

        print(f"batchctl {__version__}")
        return 0
    noted = _Noted()
    signal.signal(signal.SIGINT, noted)
    if args[:1] == ["status"]:
        from batchctl.cli.quick import answer

        code = answer(args, os.environ)
        if code is not None:
            return _interrupted() if noted.seen else code
    from batchctl.cli.app import main as full_main

    # Loaded: from here a Ctrl-C interrupts at once (full_main installs its
    # own handler first thing).
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    if noted.seen:
        return _interrupted()
    return full_main(args)


def _interrupted() -> int:
    """Ctrl-C while starting up or reading: nothing has changed."""
    sys.stderr.write("batchctl: interrupted\n")
    return int(Interrupted.exit_code)


def console() -> NoReturn:
    """The installed command and ``python -m batchctl``: ``main``, then leave
    without tearing the interpreter down. Every state write is fsynced and
    closed by the time ``main`` returns; what a normal exit adds is freeing
    the objects of the modules a command imported, 30-60 ms of CPU paid by
    every command, and by a worker between its last write and the exit that
    ``--wait`` is woken by."""
    _quiet_when_the_reader_goes()
    make_files_private()
    code = main()
    os._exit(_flushed(code))


class _PipeOut(io.RawIOBase):
    """stdout or stderr on a pipe whose reader may leave early (``status ID |
    head -1``, ``run --wait 2>&1 | head``). Once it has, output is dropped
    rather than raised: the command goes on to its end and exits with its
    own code, as if the rest had been read."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.reader_gone = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data: ReadableBuffer) -> int:
        size = len(memoryview(data))
        if self.reader_gone:
            return size
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            self.reader_gone = True
            return size


def _quiet_when_the_reader_goes() -> None:
    sys.stdout = _on_a_pipe_quietly(sys.stdout)
    sys.stderr = _on_a_pipe_quietly(sys.stderr)


def _on_a_pipe_quietly(stream: TextIO | None) -> TextIO:
    """The same stream, or, on a pipe, one that survives its reader; for a
    stream closed before the command started (``>&-``), the null device,
    where what would be printed goes, unread."""
    if stream is None:
        return open(os.devnull, "w")  # open until the process ends
    try:
        if not stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode):
            return stream
        stream.flush()
    except (OSError, ValueError, AttributeError):
        return stream  # closed, or not a real file: left as it is
    return io.TextIOWrapper(
        # Buffered like the stream it replaces; what must be seen at once
        # (progress, logs) is flushed where it is printed.
        io.BufferedWriter(_PipeOut(stream.fileno())),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=bool(getattr(stream, "line_buffering", False)),
        write_through=bool(getattr(stream, "write_through", False)),
    )


def _flushed(code: int) -> int:
    """Flush what is buffered for stdout and stderr; output that cannot be
    written (a full disk under a redirect) fails the command, with a word."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            continue  # a reader gone, or a stream closed: nobody left to tell
        except OSError as error:
            with contextlib.suppress(OSError):
                os.write(2, f"batchctl: cannot write output: {error.strerror}\n".encode())
            return code or 1
    return code
