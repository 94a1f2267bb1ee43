"""Shared test helpers: plans on disk, and the CLI called in-process or as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchctl.cli.app import main

PASSING_SCRIPT = "#!/bin/sh\necho ok\n"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        return json.loads(self.stderr)


class CliRunner:
    """Runs batchctl's real entry point in this process and captures its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> CliResult:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)


def run_batchctl(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> CliResult:
    """Runs batchctl as a real process (what CI and users do)."""
    completed = subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def make_suite(root: Path, name: str, script: str = PASSING_SCRIPT) -> Path:
    suite = root / name
    suite.mkdir(parents=True, exist_ok=True)
    entrypoint = suite / "run.sh"
    entrypoint.write_text(script)
    entrypoint.chmod(0o755)
    return suite


def write_plan(root: Path, text: str, name: str = "plan.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def snapshot_dir(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` with its bytes, to prove nothing changed."""
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
