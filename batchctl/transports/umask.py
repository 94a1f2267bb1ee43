"""Whose umask applies: batchctl makes its own files private (077: nothing
under the state directory is readable by others, whatever the user's umask),
and runs tests with the user's umask, as they would run by hand. Standard
library only: the command sets it before importing anything else."""

from __future__ import annotations

import os
import re

# The user's umask, as the first batchctl command of a chain found it; the
# workers and executors it starts inherit it.
TEST_UMASK_VARIABLE = "BATCHCTL_TEST_UMASK"


def make_files_private() -> None:
    """From now on, this process and what it starts create files 0600 and
    directories 0700; the umask it replaced is kept for the tests."""
    users = os.umask(0o077)
    if not _valid(os.environ.get(TEST_UMASK_VARIABLE)):
        os.environ[TEST_UMASK_VARIABLE] = f"{users:03o}"


def test_umask() -> str:
    """The umask a test runs with (octal digits)."""
    given = os.environ.get(TEST_UMASK_VARIABLE)
    if given is not None and _valid(given):
        return given
    current = os.umask(0o077)
    os.umask(current)
    return f"{current:03o}"


def users_file_mode() -> int:
    """The mode of a file written for the user (a report), as their own
    umask would make it, rather than batchctl's private 0600."""
    return 0o666 & ~int(test_umask(), 8)


def _valid(value: str | None) -> bool:
    return value is not None and re.fullmatch(r"[0-7]{1,4}", value) is not None
