"""Fair sharing: how long a small batch takes beside a 10,000-item one
started before it, against alone, with the real ``batchctl`` executable.

The fleet: one real local machine of 2 slots, tagged ``pool`` and ``real``,
and 8 simulated machines (1 slot, runs of 2 s), tagged ``pool``. The large
batch's 10,000 items (``sleep 0.5``) match ``tag:pool``: they run on the
simulated machines and, for real, on the local one. The small batch's 10
items (``sleep 1``) match ``tag:real``: they run only on the local machine,
so both batches want its slots. The small batch is run alone first, then
again once the large batch holds the local machine; each is the wall time
of ``run --new --wait``. The large batch is cancelled at the end.

Every BATCHCTL_* variable of the caller's environment is dropped (engine
defaults: a worker steps once a second, or at once when one of its own runs
ends). Everything lives in a temporary directory removed at the end.

    .venv/bin/python bench/fair_share.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import BenchFailed, environment_without_tuning, find_batchctl, timed_run

SMALL_ITEMS = 10
LARGE_ITEMS = 10_000
TARGET_RATIO = 2.0


def layout(root: Path) -> None:
    sims = "".join(
        f"  - {{name: sim{n}, transport: sim, tags: [pool], slots: 1, duration: 2s}}\n"
        for n in range(8)
    )
    (root / "fleet.yaml").write_text(
        "machines:\n  - {name: real, transport: local, tags: [pool, real], slots: 2}\n" + sims
    )
    for suite, script in (("small", "sleep 1"), ("large", "sleep 0.5")):
        (root / suite).mkdir()
        (root / suite / "run.sh").write_text(f"#!/bin/sh\n{script}\n")
        (root / suite / "run.sh").chmod(0o755)
    for name, suite, tag, count in (
        ("small.yaml", "small", "real", SMALL_ITEMS),
        ("large.yaml", "large", "pool", LARGE_ITEMS),
    ):
        entries = "".join(
            f"  - {{name: {suite}{n}, dir: {suite}, tag: {tag}}}\n" for n in range(count)
        )
        (root / name).write_text("version: 1\nentries:\n" + entries)


def status(batchctl: Path, batch_id: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(batchctl), "status", batch_id, "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    batch: dict[str, Any] = json.loads(out)["data"]["batch"]
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batchctl", help="the batchctl to measure (default: the venv's)")
    args = parser.parse_args(argv)
    batchctl = find_batchctl(args.batchctl)
    with tempfile.TemporaryDirectory(prefix="fair-share-") as tmp:
        root = Path(tmp)
        layout(root)
        env = {
            **environment_without_tuning(),
            "BATCHCTL_STATE_DIR": str(root / "state"),
            "BATCHCTL_FLEET": str(root / "fleet.yaml"),
        }

        def small_batch() -> float:
            argv = [str(batchctl), "run", "small.yaml", "--new", "--wait", "--quiet"]
            return timed_run(argv, env, root / "small.out", timeout_s=600)

        os.chdir(root)
        solo = small_batch()
        timed_run(
            [str(batchctl), "run", "large.yaml", "--json"], env, root / "large.out", timeout_s=600
        )
        large_id = json.loads((root / "large.out").read_text())["data"]["batch"]["id"]
        try:
            deadline = time.perf_counter() + 120
            while True:
                items = status(batchctl, large_id, env, root)["items"]
                on_real = sum(
                    1
                    for item in items
                    if item["outcome"] == "running" and item["machine"] == "real"
                )
                if on_real == 2:
                    break
                if time.perf_counter() > deadline:
                    raise BenchFailed("the large batch never took the local machine")
                time.sleep(0.2)
            shared = small_batch()
            large = status(batchctl, large_id, env, root)
        finally:
            # Its worker would go on for hours: stopped before the directory goes.
            timed_run([str(batchctl), "cancel", large_id, "--json"], env, root / "cancel.out", 600)
            # Until its worker has written its last and let go (exit 1: not all passed).
            subprocess.run(
                [str(batchctl), "status", large_id, "--wait", "--quiet"],
                env=env,
                cwd=root,
                capture_output=True,
                check=False,
                timeout=600,
            )
    counts = large["counts"]
    ratio = shared / solo
    print(
        f"{SMALL_ITEMS} real items (1 s each) on a local machine of 2 slots, beside "
        f"{LARGE_ITEMS:,} items on it and 8 simulated machines"
    )
    print()
    print("| measure | value | target | met |")
    print("|---|---:|---:|---|")
    print(f"| small batch alone, `run --wait` | {solo:.2f} s | - | |")
    print(f"| small batch beside the large one | {shared:.2f} s | - | |")
    met = "yes" if ratio <= TARGET_RATIO else "no"
    print(f"| ratio | {ratio:.2f}x | ≤ {TARGET_RATIO:g}x | {met} |")
    print(f"| large batch when the small one was done | {counts} | - | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
