"""Reading what a test left in its run's artifacts directory.

The files were written by the test, so they are read as untrusted: symbolic
links are not followed (a link could point anywhere on this host), only
regular files are opened (a FIFO would block the reader), and each is read
up to a size limit.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

# A JUnit report larger than this is not read: pytest writes about 1 KB per
# test case, so 32 MiB is tens of thousands of tests with their output.
MAX_XML_BYTES = 32 << 20
# At most this many XML files are looked at in one run's artifacts.
MAX_XML_FILES = 1000


class Unreadable(Exception):
    """A file left out, and why (one line)."""


def xml_files(
    directory: Path, *, warn: Callable[[str], None], limit: int = MAX_XML_FILES
) -> list[Path]:
    """The ``*.xml`` files under ``directory``, at any depth, sorted; none
    if it does not exist. Linked directories are not entered; beyond
    ``limit`` files the rest are left out, with a warning."""
    if directory.is_symlink():
        warn(f"{directory} is a symbolic link; not read")
        return []
    found: list[Path] = []
    for parent, directories, files in os.walk(directory):
        directories.sort()
        found.extend(Path(parent, name) for name in sorted(files) if name.lower().endswith(".xml"))
        if len(found) > limit:
            warn(f"{directory} holds more than {limit} XML files; only the first {limit} were read")
            return found[:limit]
    return found


def read_capped(path: Path, max_bytes: int = MAX_XML_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or Unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable(f"{path} is a symbolic link; not read") from None
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"{path} is not a regular file; not read")
        if info.st_size > max_bytes:
            raise Unreadable(
                f"{path} is larger than {max_bytes >> 20} MiB ({info.st_size} bytes); not read"
            )
        with open(fd, "rb", closefd=False) as handle:
            # One byte more than allowed: a file that grew since fstat is refused too.
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Unreadable(f"{path} is larger than {max_bytes >> 20} MiB; not read")
    return data
