"""What the benchmark scripts share."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_batchctl(option: str | None) -> Path:
    """The batchctl to measure: the one given, else the one beside this
    Python (the project's venv), else the one on PATH."""
    if option:
        return Path(option).absolute()
    beside = Path(sys.executable).parent / "batchctl"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("batchctl")
    if found is None:
        sys.exit("batchctl not found: pass --batchctl PATH")
    return Path(found).absolute()
