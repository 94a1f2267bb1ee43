"""Reading a run's output log, whole or as it grows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 64 * 1024


def tail_offset(path: Path, lines: int) -> int:
    """Where the last ``lines`` lines of the log begin (0: all of it). Reads
    back from the end, doubling the block: O(what is shown)."""
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, 2)
            if lines <= 0:
                return end
            size = CHUNK
            while True:
                start = max(0, end - size)
                handle.seek(start)
                block = handle.read(end - start)
                # A last line is a line whether or not it ends with a newline.
                body = block[:-1] if block.endswith(b"\n") else block
                if body.count(b"\n") >= lines:
                    index = len(body)
                    for _ in range(lines):
                        index = body.rfind(b"\n", 0, index)
                    return start + index + 1
                if start == 0:
                    return 0
                size *= 2
    except OSError:
        return 0


def follow_log(
    path: Path,
    *,
    finished: Callable[[], bool],
    sleep: Callable[[float], None],
    poll_s: float = 0.2,
    start: int = 0,
) -> Iterator[bytes]:
    """Yield the log's bytes from ``start`` as they are written, until the
    run has finished and everything it wrote was yielded."""
    offset = start
    while True:
        # Ask first, read second: output written before the run was seen
        # finished is then always read in this same pass.
        done = finished()
        if path.exists():
            with open(path, "rb") as handle:
                handle.seek(offset)
                while chunk := handle.read(CHUNK):
                    offset += len(chunk)
                    yield chunk
        if done:
            return
        sleep(poll_s)


def tail_text(path: Path, lines: int, *, max_bytes: int = CHUNK) -> str:
    """The last ``lines`` lines of a log as text, at most its last
    ``max_bytes`` bytes (a line cut there starts with ``…``). Undecodable
    bytes are replaced; a log that cannot be read says so."""
    # Only the last max_bytes are read: a log of gigabytes without a newline
    # (progress bars) must not be read whole to find its last lines.
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, 2)
            start = max(0, end - max_bytes)
            handle.seek(start)
            data = handle.read(end - start)
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})\n"
    pieces = data.split(b"\n")
    wanted = lines + (1 if data.endswith(b"\n") else 0)  # the empty piece after the last newline
    cut_line = start > 0 and len(pieces) <= wanted  # the first line kept began before start
    text = b"\n".join(pieces[-wanted:] if wanted else []).decode(errors="replace")
    return "…" + text if cut_line else text
