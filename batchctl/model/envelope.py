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

# The envelope's end after its data's last member, the items list:
# ``...\n  }\n}\n`` closes data and the envelope.
_ENVELOPE_END = b"\n  }\n}\n"
# Items sit three levels deep (envelope, data, items): six spaces, where a
# list dumped alone puts its members at two.
_ITEM_SHIFT = b"    "


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
    heading: Mapping[str, Any], item_chunks: Iterable[list[dict[str, Any]]]
) -> Iterator[bytes]:
    """The bytes of ``ok_envelope_bytes({**heading, "items": [...every chunk's
    items]})``, produced a chunk of items at a time: a 100,000-item view is
    never held whole. ``items`` is the data's last member, as in every batch
    view. Each chunk is dumped as a list and shifted to the depth of the
    envelope's items; JSON strings hold no raw newline, so every newline in
    a dump is layout."""
    empty = dumps_bytes(ok_envelope({**heading, "items": []}))
    closing = b"[]" + _ENVELOPE_END
    assert empty.endswith(closing), "items must be the data's last member"
    opening = empty[: -len(closing)]
    started = False
    for chunk in item_chunks:
        if not chunk:
            continue
        members = orjson.dumps(chunk, option=orjson.OPT_INDENT_2)[2:-2]  # without "[\n", "\n]"
        shifted = _ITEM_SHIFT + members.replace(b"\n", b"\n" + _ITEM_SHIFT)
        yield (b",\n" if started else opening + b"[\n") + shifted
        started = True
    yield b"\n    ]" + _ENVELOPE_END if started else empty
