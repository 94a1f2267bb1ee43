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
