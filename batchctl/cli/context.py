"""Builds the service a command talks to, from options and environment."""

from batchctl.core.service import BatchService
from batchctl.runtime.clock import SystemClock
from batchctl.runtime.settings import Settings, load_settings, user_at_host
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore


def open_service(settings: Settings) -> BatchService:
    return BatchService(
        batches=BatchStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        runs=RunStore(settings.state_dir, lock_timeout=settings.lock_timeout),
        clock=SystemClock(),
        identity=user_at_host(),
    )


__all__ = ["load_settings", "open_service"]
