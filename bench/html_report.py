"""The HTML report of a large batch: its size, the time to write it, and
the time Chromium takes to render it.

A batch of N items (default 1,000) runs on simulated machines (``transport:
sim``, 100 machines of 1 slot, runs of 0-50 ms, 10% failed, 2% errors, 2%
timeouts; plus one that always succeeds, where the item the others need
runs): one item the others need, N-2 matrix items retried once when
they fail, one item needing them all. Then ``batchctl report ID --html``
writes the page (wall time of the whole command), and headless Chromium
(Debian's ``/usr/bin/chromium``, driven by playwright) opens it from a
``file:`` URL, several times: the time from navigation start to the end of
the load event and to the first contentful paint, as the page's own
Performance API measures them, and the wall time of ``page.goto`` until
load, median over the repeats.

Every BATCHCTL_* variable of the caller's environment is dropped;
everything lives in a temporary directory removed at the end.

    .venv/bin/python bench/html_report.py
    .venv/bin/python bench/html_report.py --items 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import BenchFailed, compile_bytecode, environment_without_tuning, find_batchctl

import batchctl

MACHINES = 100
SIZE_TARGET = 2_000_000
CHROMIUM = "/usr/bin/chromium"


def fleet_yaml(machines: int) -> str:
    # `steady` always succeeds: the item every other one needs runs there, so
    # each measure is of a whole batch, not of one whose root failed.
    return (
        "machines:\n  - {name: steady, transport: sim, tags: [steady], slots: 1, "
        "duration: 10ms}\n"
        + "".join(
            f"  - {{name: sim{index:04d}, transport: sim, tags: [local], slots: 1, "
            "duration: 0s..50ms, outcomes: {failed: 0.1, error: 0.02, timeout: 0.02}}\n"
            for index in range(1, machines + 1)
        )
    )


def plan_yaml(items: int) -> str:
    values = ", ".join(str(index) for index in range(1, items - 1))
    return (
        "version: 1\nentries:\n"
        "  - {name: setup, dir: suite, tag: steady}\n"
        "  - {name: test, dir: suite, needs: [setup], retries: 1, "
        f"retry_on: [failed, error], matrix: {{shard: [{values}]}}}}\n"
        "  - {name: final, dir: suite, needs: [test]}\n"
    )


def run(argv: list[str], env: dict[str, str], cwd: Path, ok: tuple[int, ...]) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode not in ok:
        raise BenchFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def render_times(page: Path, repeat: int, home: Path) -> list[tuple[float, float, float]]:
    """(load event end, first contentful paint, goto wall time), in seconds, per repeat."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
        )
        try:
            for _ in range(repeat):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                tab = context.new_page()
                start = time.perf_counter()
                tab.goto(page.as_uri(), wait_until="load")
                wall = time.perf_counter() - start
                measured = tab.evaluate(
                    """() => {
                      const nav = performance.getEntriesByType('navigation')[0];
                      const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                      return [nav.loadEventEnd, fcp ? fcp.startTime : -1];
                    }"""
                )
                times.append((measured[0] / 1000, measured[1] / 1000, wall))
                context.close()
        finally:
            browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batchctl", help="the batchctl executable (default: beside this Python)")
    args = parser.parse_args()
    compile_bytecode()
    executable = str(find_batchctl(args.batchctl))
    env = environment_without_tuning()
    with tempfile.TemporaryDirectory(prefix="bench-html-") as temp:
        root = Path(temp)
        suite = root / "suite"
        suite.mkdir()
        (suite / "run.sh").write_text("#!/bin/sh\necho ok\n")
        (suite / "run.sh").chmod(0o755)
        (root / "plan.yaml").write_text(plan_yaml(args.items))
        (root / "fleet.yaml").write_text(fleet_yaml(MACHINES))
        state = ["--state-dir", str(root / "state")]
        env = {**env, "BATCHCTL_FLEET": str(root / "fleet.yaml"), "HOME": str(root)}
        ran = run([executable, "run", "plan.yaml", "--wait", "--json", *state], env, root, (0, 1))
        batch = json.loads(ran)["data"]["batch"]
        attempts = sum(len(i["history"]) + 1 for i in batch["items"] if i.get("run_id"))
        page = root / "report.html"
        start = time.perf_counter()
        run([executable, "report", batch["id"], "--html", str(page), *state], env, root, (0,))
        write_s = time.perf_counter() - start
        size = page.stat().st_size
        times = render_times(page, args.repeat, root)

    load = statistics.median(t[0] for t in times)
    paint = statistics.median(t[1] for t in times)
    wall = statistics.median(t[2] for t in times)
    now = datetime.now(UTC)  # noqa: TID251 - the date the figures were taken
    print(
        f"{now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, batchctl {batchctl.__version__}. {args.items} items on "
        f"{MACHINES} simulated machines, {attempts} runs; {len(times)} loads in headless "
        f"Chromium ({CHROMIUM}), medians. 1 MB = 1,000,000 B.\n"
    )
    print("| measure | value | target | met |")
    print("|---|---:|---:|---|")
    met = "yes" if size <= SIZE_TARGET else "no"
    print(f"| page size | {size / 1e6:.2f} MB ({size:,} B) | ≤ 2 MB | {met} |")
    print(f"| `report ID --html` wall time | {write_s:.3f} s | - | |")
    print(f"| Chromium: navigation start to load event end | {load:.3f} s | - | |")
    print(f"| Chromium: first contentful paint | {paint:.3f} s | - | |")
    print(f"| `page.goto(file:…, until load)` wall time | {wall:.3f} s | - | |")
    return 0 if size <= SIZE_TARGET else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailed as exc:
        sys.stderr.write(f"bench failed: {exc}\n")
        sys.exit(2)
