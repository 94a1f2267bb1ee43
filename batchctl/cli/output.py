"""Where output goes: one JSON envelope on stdout in --json mode, tables otherwise.

In JSON mode stdout carries exactly one document; every progress line and
message goes to stderr so scripts can parse stdout blindly.
"""

import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel
from rich.console import Console

from batchctl.model.errors import BatchctlError

ENVELOPE_SCHEMA_VERSION = "v1"
PIPE_WIDTH = 160


def _dumps(document: dict[str, Any]) -> str:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def error_envelope(error: BatchctlError) -> str:
    return _dumps(
        {
            "schema_version": ENVELOPE_SCHEMA_VERSION,
            "status": "error",
            "error": {"code": error.code, "message": error.message, "details": error.details},
        }
    )


class Output:
    def __init__(self, *, json_mode: bool, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        # Piped output (CI logs) has no terminal width; 80 columns would cut ids.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
        self.stdout = Console(highlight=False, soft_wrap=False, width=width)
        self.stderr = Console(stderr=True, highlight=False)

    def result(self, data: BaseModel, render: Callable[[Console], None]) -> None:
        if self.json_mode:
            document = {
                "schema_version": ENVELOPE_SCHEMA_VERSION,
                "status": "ok",
                "data": data.model_dump(mode="json"),
            }
            sys.stdout.write(_dumps(document))
            sys.stdout.flush()
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
