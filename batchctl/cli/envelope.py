"""The JSON envelope every --json answer is wrapped in (SPEC §8). orjson only:
the quick ``status`` answer prints it before the rest of the command line
is imported."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pydantic import BaseModel

    from batchctl.model.errors import BatchctlError

ENVELOPE_SCHEMA_VERSION = "v1"


def _dumps(document: dict[str, Any]) -> str:
    return _dumps_bytes(document).decode()


def _dumps_bytes(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def ok_envelope_bytes(data: BaseModel | Mapping[str, Any]) -> bytes:
    """``data``: a view model, or a view already in its JSON form. Bytes, so
    a large view is written out without being decoded and encoded again."""
    payload = data if isinstance(data, Mapping) else data.model_dump(mode="json")
    return _dumps_bytes(
        {"schema_version": ENVELOPE_SCHEMA_VERSION, "status": "ok", "data": payload}
    )


def error_envelope(error: BatchctlError) -> str:
    return _dumps(
        {
            "schema_version": ENVELOPE_SCHEMA_VERSION,
            "status": "error",
            "error": {"code": error.code, "message": error.message, "details": error.details},
        }
    )


def print_ok(data: BaseModel | Mapping[str, Any]) -> None:
    """The envelope on stdout, as bytes where stdout has a byte layer."""
    payload = ok_envelope_bytes(data)
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(payload.decode())
    else:
        buffer.write(payload)
    sys.stdout.flush()
