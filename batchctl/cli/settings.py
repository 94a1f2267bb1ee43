"""Where state lives and how long to wait for locks, from options and environment."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchctl.cli.locations import resolve_state_dir
from batchctl.engine.dispatch import Tuning
from batchctl.model.errors import InvalidInput
from batchctl.state.journal import DEFAULT_LOCK_TIMEOUT_S


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    lock_timeout: float
    env_tag: str | None
    fleet_path: Path | None
    tuning: Tuning


def seconds_from_env(environ: Mapping[str, str], variable: str, default: float) -> float:
    raw = environ.get(variable)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise InvalidInput(
            f"{variable}: expected a number of seconds >= 0, got {raw!r}",
            details={"variable": variable},
        )
    return value


def resolve_fleet_path(
    option: str | None, environ: Mapping[str, str], state_dir: Path
) -> Path | None:
    """``--fleet``, else $BATCHCTL_FLEET, else <state-dir>/fleet.yaml if it
    exists; None means the default fleet (this host alone)."""
    if option:
        return Path(option).expanduser().absolute()
    if environ.get("BATCHCTL_FLEET"):
        return Path(environ["BATCHCTL_FLEET"]).expanduser().absolute()
    in_state = state_dir / "fleet.yaml"
    return in_state if in_state.is_file() else None


def resolve_tuning(environ: Mapping[str, str]) -> Tuning:
    defaults = Tuning()
    return Tuning(
        tick_s=seconds_from_env(environ, "BATCHCTL_TICK", defaults.tick_s),
        lease_stale_s=seconds_from_env(environ, "BATCHCTL_LEASE_STALE", defaults.lease_stale_s),
        kill_grace_s=seconds_from_env(environ, "BATCHCTL_KILL_GRACE", defaults.kill_grace_s),
        heartbeat_s=seconds_from_env(environ, "BATCHCTL_HEARTBEAT", defaults.heartbeat_s),
        retry_base_s=seconds_from_env(environ, "BATCHCTL_RETRY_BASE", defaults.retry_base_s),
        retry_cap_s=seconds_from_env(environ, "BATCHCTL_RETRY_CAP", defaults.retry_cap_s),
        critical_path_first=ready_order_from_env(environ),
    )


READY_ORDERS = ("critical-path", "fifo")


def ready_order_from_env(environ: Mapping[str, str]) -> bool:
    """$BATCHCTL_READY_ORDER: ``critical-path`` (the default) or ``fifo``
    (authored order, to compare against); True for the critical path."""
    raw = environ.get("BATCHCTL_READY_ORDER") or READY_ORDERS[0]
    if raw not in READY_ORDERS:
        raise InvalidInput(
            f"BATCHCTL_READY_ORDER: expected one of {', '.join(READY_ORDERS)}, got {raw!r}",
            details={"variable": "BATCHCTL_READY_ORDER"},
        )
    return raw == READY_ORDERS[0]


def load_settings(
    state_dir_option: str | None,
    fleet_option: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    state_dir = resolve_state_dir(state_dir_option, env)
    return Settings(
        state_dir=state_dir,
        lock_timeout=seconds_from_env(env, "BATCHCTL_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S),
        env_tag=env.get("BATCHCTL_TAG") or None,
        fleet_path=resolve_fleet_path(fleet_option, env, state_dir),
        tuning=resolve_tuning(env),
    )


def user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
