"""The JSON envelope every --json answer is wrapped in (SPEC §8), as the bytes
printed: whole, or item by item for a view too large to hold twice.

orjson only: the quick ``status`` answer and the final view a worker writes
(``state.final_views``) print the same bytes as the full command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pydantic import BaseModel

ENVELOPE_SCHEMA_VERSION = "v1"

_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE

_ITEMS_KEY = b'"items": '


def dumps_bytes(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document, option=_OPTIONS)


def ok_envelope(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"schema_version": ENVELOPE_SCHEMA_VERSION, "status": "ok", "data": data}


def ok_envelope_bytes(data: BaseModel | Mapping[str, Any]) -> bytes:
    """``data``: a view model, or a view already in its JSON form. Bytes, so
    a large view is written out without being decoded and encoded again."""
    payload = data if isinstance(data, Mapping) else data.model_dump(mode="json")
    return dumps_bytes(ok_envelope(payload))


def ok_envelope_chunks(
    data: Mapping[str, Any],
    heading: Mapping[str, Any],
    item_chunks: Iterable[list[dict[str, Any]]],
) -> Iterator[bytes]:
    """The bytes of ``ok_envelope_bytes({**data, "batch": {**heading, "items":
    [...every chunk's items]}})``, produced a chunk of items at a time: a
    100,000-item view is never held whole. ``items`` is the batch's last
    member and ``batch`` the data's, as in every batch view. Each chunk is
    dumped as a list and shifted to the depth of the envelope's items; JSON
    strings hold no raw newline, so every newline in a dump is layout."""
    empty = dumps_bytes(ok_envelope({**data, "batch": {**heading, "items": []}}))
    # The last key "items" is the batch's: inside JSON strings quotes are escaped.
    at = empty.rindex(_ITEMS_KEY + b"[]") + len(_ITEMS_KEY)
    opening, closing = empty[:at], empty[at + 2 :]
    indent = at - len(_ITEMS_KEY) - (empty.rindex(b"\n", 0, at) + 1)
    # A list dumped alone puts its members two spaces in; here they sit two
    # spaces deeper than the "items" key.
    shift = b" " * indent
    started = False
    for chunk in item_chunks:
        if not chunk:
            continue
        members = orjson.dumps(chunk, option=orjson.OPT_INDENT_2)[2:-2]  # without "[\n", "\n]"
        shifted = shift + members.replace(b"\n", b"\n" + shift)
        yield (b",\n" if started else opening + b"[\n") + shifted
        started = True
    yield b"\n" + shift + b"]" + closing if started else empty
