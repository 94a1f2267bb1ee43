"""Nothing batchctl keeps is readable by others, whatever the user's umask,
while tests still run with the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_suite, write_plan

WRITES_AN_ARTIFACT = '#!/bin/sh\necho made > "$BATCHCTL_ARTIFACTS_DIR/made.txt"\n'


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_is_private_under_umask_000_and_tests_keep_the_users_umask(
    workdir: Path, state_dir: Path
) -> None:
    make_suite(workdir / "suites", "a", WRITES_AN_ARTIFACT)
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a}\n")

    completed = subprocess.run(
        [sys.executable, "-m", "batchctl", "run", "plan.yaml", "--wait"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.umask(0),
    )

    assert completed.returncode == 0, completed.stderr
    [run_dir] = (state_dir / "runs").iterdir()
    work = run_dir / "work"
    made = run_dir / "artifacts" / "made.txt"
    # What the test made, it made with the user's umask (000).
    assert mode(made) == 0o666
    for path in [state_dir, *state_dir.rglob("*")]:
        if path == made or work in path.parents:
            continue  # the test's own file; the copy of its directory keeps its modes
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, f"{path.relative_to(state_dir)}: {oct(mode(path))}"
