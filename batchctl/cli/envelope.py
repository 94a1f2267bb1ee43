"""Printing the JSON envelope every --json answer is wrapped in (SPEC §8;
its bytes: ``model.envelope``). orjson only: the quick ``status`` answer
prints it before the rest of the command line is imported."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from batchctl.model.envelope import ENVELOPE_SCHEMA_VERSION, dumps_bytes, ok_envelope_bytes
from batchctl.model.errors import InvalidInput

if TYPE_CHECKING:
    from pydantic import BaseModel

    from batchctl.model.errors import BatchctlError


# What --jq asked for, for this command (see jq_filter).
_jq_filter: Callable[[bytes], bytes] | None = None


def jq_filter(expression: str) -> Callable[[bytes], bytes]:
    """``--jq EXPR``: the answer's envelope through a jq program (the jq
    library, the language users know from jq and ``gh --jq``). Each result
    on a line of its own, strings as they are, anything else as JSON. A bad
    program, or one that fails on the answer, is invalid input (exit 2),
    and then nothing is printed."""
    import jq  # only for --jq: a C extension the other commands do not load

    try:
        program = jq.compile(expression)
    except ValueError as exc:
        raise InvalidInput(f"--jq: {exc}", details={"jq": expression}) from None

    def apply(payload: bytes) -> bytes:
        try:
            results = program.input_text(payload.decode()).all()
        except ValueError as exc:
            raise InvalidInput(f"--jq: {exc}", details={"jq": expression}) from None
        lines = [
            result.encode() if isinstance(result, str) else orjson.dumps(result)
            for result in results
        ]
        return b"".join(line + b"\n" for line in lines)

    return apply


@contextlib.contextmanager
def filtered_by(expression: str | None) -> Iterator[None]:
    """Answers printed while the block runs go through ``--jq EXPR``."""
    global _jq_filter
    previous = _jq_filter
    _jq_filter = jq_filter(expression) if expression is not None else None
    try:
        yield
    finally:
        _jq_filter = previous


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
    byte layer: a large view is not decoded to be encoded again. Through
    the ``--jq`` filter when one is set."""
    if _jq_filter is not None:
        payload = _jq_filter(payload)
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(payload.decode())
    else:
        buffer.write(payload)
    sys.stdout.flush()
