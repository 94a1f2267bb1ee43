"""Is a worker's lease on a batch still held? (SPEC §6)"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from batchctl.model.models import Lease


def lease_is_live(
    lease: Lease | None,
    *,
    now: datetime,
    stale_s: float,
    this_host: str,
    pid_alive: Callable[[int], bool],
) -> bool:
    """A lease is dead once its heartbeat is older than ``stale_s`` — or at
    once, when its holder ran on this host and its process is gone (a killed
    worker need not be waited out)."""
    if lease is None:
        return False
    if now - lease.heartbeat_at > timedelta(seconds=stale_s):
        return False
    return lease.host != this_host or pid_alive(lease.pid)
