"""Where output goes: one JSON envelope on stdout in --json mode, tables otherwise.

In JSON mode stdout carries exactly one document; every progress line and
message goes to stderr so scripts can parse stdout blindly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from batchctl.cli.envelope import print_ok

if TYPE_CHECKING:
    from rich.console import Console

PIPE_WIDTH = 160


class Output:
    def __init__(self, *, json_mode: bool, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet

    # The consoles (and rich) are made when something is first printed: a
    # command that prints at the end, as ``run`` does, starts its work first.
    @cached_property
    def stdout(self) -> Console:
        from rich.console import Console

        # Piped output (CI logs) has no terminal width; 80 columns would cut ids.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
        return Console(highlight=False, soft_wrap=False, width=width)

    @cached_property
    def stderr(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False)

    def result(
        self, data: BaseModel | Mapping[str, Any], render: Callable[[Console], None]
    ) -> None:
        """``data`` is a view model, or a view already in its JSON form (what
        large batches use: validating 100,000 items only to print them is waste)."""
        if self.json_mode:
            print_ok(data)
        else:
            render(self.stdout)

    def note(self, message: str) -> None:
        """A side remark for people: never on stdout in JSON mode, never with --quiet."""
        if self.quiet:
            return
        if self.json_mode:
            self.stderr.print(message, markup=False)
        else:
            self.stdout.print(message, markup=False)
