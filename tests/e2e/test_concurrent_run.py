"""Several CI jobs running the same plan at the same moment share one batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_suite, stored_batches, write_plan


def test_eight_concurrent_runs_end_with_one_batch(workdir: Path, state_dir: Path) -> None:
    for name in ("a", "b", "c"):
        make_suite(workdir / "suites", name)
    write_plan(
        workdir,
        "version: 1\nentries:\n"
        + "".join(f"  - {{name: {n}, dir: suites/{n}}}\n" for n in ("a", "b", "c")),
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "batchctl", "run", "plan.yaml", "--staging", "ci-1", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(8)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0] * 8, [err for _, err in outputs]
    results = [json.loads(out)["data"] for out, _ in outputs]
    assert len({result["batch"]["id"] for result in results}) == 1
    assert sorted(result["resumed"] for result in results) == [False] + [True] * 7
    assert len(stored_batches(state_dir)) == 1
