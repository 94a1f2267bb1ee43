"""Is a worker's lease on a batch still held? (SPEC §6)

Wall clocks are never compared. A holder in this boot and pid namespace is
alive exactly while its process is (identified by boot id, pid namespace,
pid and start time, so a recycled pid does not count). A holder elsewhere is
alive while the renewal count it writes is seen to move: this judge
remembers when, on its own monotonic clock, it first saw each count, and
calls the holder dead once the count stood still for ``stale_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from batchctl.model.models import Lease, ProcessIdentity


@dataclass
class LeaseJudge:
    stale_s: float
    monotonic: Callable[[], float]
    # True/False for a process this host can see, None for one it cannot.
    identity_alive: Callable[[ProcessIdentity], bool | None]
    this_host: str = ""
    pid_alive: Callable[[int], bool] = lambda pid: True
    _seen: dict[str, tuple[str, int, float]] = field(default_factory=dict)

    def live(self, batch_id: str, lease: Lease | None) -> bool:
        if lease is None:
            return False
        if lease.holder is not None:
            verdict = self.identity_alive(lease.holder)
            if verdict is not None:
                return verdict
        elif lease.host == self.this_host:
            # A lease written before holders were recorded: pid on this host.
            return self.pid_alive(lease.pid)
        now = self.monotonic()
        seen = self._seen.get(batch_id)
        if seen is None or (seen[0], seen[1]) != (lease.token, lease.beat):
            self._seen[batch_id] = (lease.token, lease.beat, now)
            return True
        return now - seen[2] < self.stale_s
