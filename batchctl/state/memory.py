"""Keeping large state cheap to load."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
