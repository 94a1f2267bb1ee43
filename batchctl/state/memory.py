"""Keeping large state cheap to load."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic
    structures (a parsed state file, its models): allocating millions of
    objects otherwise triggers full collections that cost more than the
    parse itself (measured 2-3x on a 100,000-item batch; bench/RESULTS.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def intern_values(record: dict[str, Any], keys: Iterable[str]) -> None:
    """Share one string object among the many records that repeat a value
    (a directory, a selector, a machine, a timestamp of one step): a
    100,000-item batch otherwise holds 100,000 copies of each."""
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            record[key] = sys.intern(value)
        elif isinstance(value, list) and all(isinstance(part, str) for part in value):
            record[key] = [sys.intern(part) for part in value]


# One set per distinct set of field names (see share_fields_set).
_FIELD_SETS: dict[frozenset[str], set[str]] = {}


def share_fields_set(model: Any) -> None:
    """Give a frozen pydantic model the one shared set of the field names it
    was given. Pydantic keeps that set per instance (728 bytes for an entry's
    seven fields): a 100,000-item batch held 200,000 of them, about 150 MB.
    A frozen model never changes it, and copies (``model_copy``) copy it
    before they change theirs, so sharing is invisible."""
    key = frozenset(model.__pydantic_fields_set__)
    shared = _FIELD_SETS.setdefault(key, set(key))
    object.__setattr__(model, "__pydantic_fields_set__", shared)
