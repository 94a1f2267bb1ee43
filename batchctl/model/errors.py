"""The one error tree. Each user-facing error carries its code and its exit code.

The CLI maps these to exit codes and JSON envelopes in exactly one place
(``batchctl.cli.app``); nothing else decides an exit code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    NOT_ALL_PASSED = 1
    INVALID_INPUT = 2
    NOT_FOUND = 3
    STATE = 4
    INTERNAL = 70
    INTERRUPTED = 130


class BatchctlError(Exception):
    """Root of every error batchctl reports to a user."""

    code = "error"
    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class InvalidInput(BatchctlError):
    code = "invalid_input"
    exit_code = ExitCode.INVALID_INPUT


class InvalidPlan(InvalidInput):
    """A plan with one or more problems; ``problems`` lists every one of them."""

    code = "invalid_plan"

    def __init__(self, path: str, problems: list[str]) -> None:
        count = len(problems)
        head = f"{path}: invalid plan ({count} problem{'s' if count != 1 else ''})"
        super().__init__(
            head + "".join(f"\n  {problem}" for problem in problems),
            details={"file": path, "problems": problems},
        )
        self.problems = problems


class EmptyPlan(InvalidInput):
    code = "empty_plan"


class InvalidFleet(InvalidInput):
    code = "invalid_fleet"


class NotFound(BatchctlError):
    code = "not_found"
    exit_code = ExitCode.NOT_FOUND


class StateError(BatchctlError):
    code = "state_error"
    exit_code = ExitCode.STATE


class LockTimeout(StateError):
    code = "lock_timeout"


class StateUnreadable(StateError):
    code = "state_unreadable"


class StateTooNew(StateError):
    code = "state_too_new"


class LeaseLost(StateError):
    """The worker's lease was taken over; a fenced write was refused."""

    code = "lease_lost"


class OutputUnwritable(BatchctlError):
    """A file the user asked for (a report) cannot be written: its directory
    is missing or not writable, the disk is full. The same code as a state
    file that cannot be written: what is wrong is the file system, not the
    command line."""

    code = "output_unwritable"
    exit_code = ExitCode.STATE


class Interrupted(BatchctlError):
    """The user pressed Ctrl-C. Raised from our own SIGINT handler, so it
    reaches the one place exit codes are decided (typer turns a
    KeyboardInterrupt into a silent exit 130)."""

    code = "interrupted"
    exit_code = ExitCode.INTERRUPTED
