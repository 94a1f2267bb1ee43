"""Printing the JSON envelope every --json answer is wrapped in (SPEC §8;
its bytes: ``model.envelope``). orjson only: the quick ``status`` answer
prints it before the rest of the command line is imported."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from batchctl.model.envelope import ENVELOPE_SCHEMA_VERSION, dumps_bytes, ok_envelope_bytes

if TYPE_CHECKING:
    from pydantic import BaseModel

    from batchctl.model.errors import BatchctlError


def error_envelope(error: BatchctlError) -> str:
    return dumps_bytes(
        {
            "schema_version": ENVELOPE_SCHEMA_VERSION,
            "status": "error",
            "error": {"code": error.code, "message": error.message, "details": error.details},
        }
    ).decode()


def print_ok(data: BaseModel | Mapping[str, Any]) -> None:
    """The envelope on stdout."""
    print_bytes(ok_envelope_bytes(data))


def print_bytes(payload: bytes) -> None:
    """An envelope already in bytes on stdout, as bytes where stdout has a
    byte layer: a large view is not decoded to be encoded again."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(payload.decode())
    else:
        buffer.write(payload)
    sys.stdout.flush()
