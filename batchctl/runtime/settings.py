"""Where state lives and how long to wait for locks, from options and environment."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchctl.core.errors import InvalidInput
from batchctl.state.jsonfile import DEFAULT_LOCK_TIMEOUT_S


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    lock_timeout: float
    env_tag: str | None


def resolve_state_dir(option: str | None, environ: Mapping[str, str]) -> Path:
    if option:
        return Path(option).expanduser().absolute()
    if environ.get("BATCHCTL_STATE_DIR"):
        return Path(environ["BATCHCTL_STATE_DIR"]).expanduser().absolute()
    xdg = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().absolute() / "batchctl"


def resolve_lock_timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get("BATCHCTL_LOCK_TIMEOUT")
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise InvalidInput(
            f"BATCHCTL_LOCK_TIMEOUT: expected a number of seconds >= 0, got {raw!r}",
            details={"variable": "BATCHCTL_LOCK_TIMEOUT"},
        )
    return value


def load_settings(
    state_dir_option: str | None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        state_dir=resolve_state_dir(state_dir_option, env),
        lock_timeout=resolve_lock_timeout(env),
        env_tag=env.get("BATCHCTL_TAG") or None,
    )


def user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
