"""Where the state directory is, from the option and the environment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def resolve_state_dir(option: str | None, environ: Mapping[str, str]) -> Path:
    """``--state-dir``, else $BATCHCTL_STATE_DIR, else $XDG_STATE_HOME/batchctl
    (~/.local/state/batchctl)."""
    if option:
        return Path(option).expanduser().absolute()
    if environ.get("BATCHCTL_STATE_DIR"):
        return Path(environ["BATCHCTL_STATE_DIR"]).expanduser().absolute()
    xdg = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().absolute() / "batchctl"
