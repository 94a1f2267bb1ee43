"""A view rendered a chunk of items at a time is, byte for byte, the view
rendered whole: what the worker stores is what `status --json` prints."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batchctl.model.envelope import ok_envelope_bytes, ok_envelope_chunks

# JSON values as views hold them, strings with newlines, quotes and
# non-ASCII included, and empty lists and objects (which orjson prints on
# one line at any depth).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
items = st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=12)
headings = st.dictionaries(
    st.text(max_size=6).filter(lambda key: key != "items"), json_values, max_size=4
)


def chunked(members: list[dict[str, Any]], cuts: list[int]) -> list[list[dict[str, Any]]]:
    bounds = sorted({0, len(members), *(cut % (len(members) + 1) for cut in cuts)})
    chunks = [members[start:end] for start, end in itertools.pairwise(bounds)]
    return [[], *chunks, []]  # empty chunks anywhere change nothing


@given(headings, headings, items, st.lists(st.integers(min_value=0), max_size=5))
def test_chunked_rendering_is_the_whole_rendering(
    data: dict[str, Any], heading: dict[str, Any], members: list[dict[str, Any]], cuts: list[int]
) -> None:
    data.pop("batch", None)
    whole = ok_envelope_bytes({**data, "batch": {**heading, "items": members}})
    assert b"".join(ok_envelope_chunks(data, heading, chunked(members, cuts))) == whole
