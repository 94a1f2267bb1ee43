"""Reading a run's output log, whole or as it grows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 64 * 1024


def follow_log(
    path: Path,
    *,
    finished: Callable[[], bool],
    sleep: Callable[[float], None],
    poll_s: float = 0.2,
) -> Iterator[bytes]:
    """Yield the log's bytes as they are written, until the run has finished
    and everything it wrote was yielded."""
    offset = 0
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
