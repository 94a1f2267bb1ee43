"""Slurm throughput: ``batchctl run --wait`` on a ``slurm`` machine against
plain Slurm, on the same cluster, in the same call.

Three ways through the same N trivial items (``run.sh`` is ``true``), each
timed from the first command to the moment the last job is over:

  batchctl  -- ``batchctl run plan.yaml --wait`` on a fleet of one slurm machine
  sbatch    -- a shell loop of ``sbatch --parsable DIR/run.sh``, one per item,
               then polling ``squeue`` until none of them is left in flight
  array     -- one ``sbatch --array=0-(N-1)`` whose task runs the N-th item,
               then the same polling

The cluster is the one ``scripts/slurm-cluster`` starts on this host (two
nodes, 4 CPUs each), started here in a temporary directory and stopped by
pid at the end, unless ``--slurm-conf`` names one already running. Needs
root (slurmd) and Slurm installed (``scripts/slurm-cluster install``).
Rounds alternate the three (batchctl, sbatch, array, batchctl, ...) so a
drift in the machine's speed touches all of them.

    .venv/bin/python bench/slurm_throughput.py --items 1000 --repeat 1
    .venv/bin/python bench/slurm_throughput.py --items 200 --repeat 3 --out /tmp/s.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    BenchFailed,
    compile_bytecode,
    environment_without_tuning,
    find_batchctl,
    timed_run,
)

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "scripts" / "slurm-cluster"
IN_FLIGHT = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"


def wait_for_jobs(env: dict[str, str], name: str, timeout_s: float) -> None:
    """Until no job of this name is in flight (polled every 0.1 s)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        done = subprocess.run(
            ["squeue", "-h", "-t", IN_FLIGHT, "--name", name, "-o", "%i"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and not done.stdout.strip():
            return
        if time.perf_counter() > deadline:
            raise BenchFailed(f"jobs named {name} still in flight after {timeout_s:g} s")
        time.sleep(0.1)


def count_failed(env: dict[str, str], name: str) -> int:
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "--name", name, "-o", "%T"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(1 for state in done.stdout.split() if state != "COMPLETED")


def prepare(root: Path, items: int, conf: Path) -> None:
    suites = root / "suites"
    for index in range(items):
        suite = suites / f"t{index:05d}"
        suite.mkdir(parents=True)
        script = suite / "run.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        script.chmod(0o755)
    (root / "plan.yaml").write_text("version: 1\nentries:\n  - {name: t, dirs: 'suites/*'}\n")
    (root / "shared").mkdir()
    (root / "fleet.yaml").write_text(
        "machines:\n"
        f"  - {{name: hpc, transport: slurm, partition: debug, shared_dir: {root / 'shared'}, "
        f"slurm_conf: {conf}, tags: [local]}}\n"
    )
    # The same scripts for plain Slurm: a loop of sbatch, and one array.
    out = root / "plain-out"
    out.mkdir()
    (root / "loop.sh").write_text(
        "#!/bin/sh\n"
        f"for dir in {suites}/*; do\n"
        f'  sbatch --parsable --job-name="$1" --output={out}/%j.out --chdir="$dir" '
        '--no-requeue "$dir/run.sh" >/dev/null || exit 1\n'
        "done\n"
    )
    (root / "array.sh").write_text(
        f'#!/bin/sh\nset -- {suites}/*\nshift "$SLURM_ARRAY_TASK_ID"\ncd "$1" && exec ./run.sh\n'
    )


def measure(
    root: Path, items: int, rounds: int, batchctl: Path, conf: Path
) -> dict[str, list[float]]:
    env = {**environment_without_tuning(), "SLURM_CONF": str(conf)}
    times: dict[str, list[float]] = {"batchctl": [], "sbatch": [], "array": []}
    timeout_s = 60 + items * 2.0
    for round_no in range(rounds):
        state = root / f"state-{round_no}"
        times["batchctl"].append(
            timed_run(
                [
                    str(batchctl), "run", str(root / "plan.yaml"), "--wait", "--quiet", "--new",
                    "--state-dir", str(state), "--fleet", str(root / "fleet.yaml"),
                ],
                env,
                root / f"batchctl-{round_no}.out",
                timeout_s,
            )
        )  # fmt: skip
        name = f"loop{round_no}"
        start = time.perf_counter()
        subprocess.run(["sh", str(root / "loop.sh"), name], env=env, check=True)
        wait_for_jobs(env, name, timeout_s)
        times["sbatch"].append(time.perf_counter() - start)
        if count_failed(env, name):
            raise BenchFailed(f"{count_failed(env, name)} jobs of the sbatch loop did not complete")
        name = f"array{round_no}"
        start = time.perf_counter()
        subprocess.run(
            [
                "sbatch", "--parsable", f"--job-name={name}", f"--array=0-{items - 1}",
                f"--output={root / 'plain-out'}/a%A_%a.out", "--no-requeue",
                str(root / "array.sh"),
            ],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        wait_for_jobs(env, name, timeout_s)
        times["array"].append(time.perf_counter() - start)
        if count_failed(env, name):
            raise BenchFailed("tasks of the array did not complete")
    return times


def report(
    times: dict[str, list[float]], items: int, rounds: int, load: tuple[float, ...], version: str
) -> str:
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "  # noqa: TID251 - a bench, not the engine
        f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {version}; {items} items of `true`, "
        f"{rounds} round(s), cluster of 2 nodes x 4 CPUs on this host (scripts/slurm-cluster). "
        f"Load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        "| way | median wall time | per item | vs sbatch loop | vs array |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("batchctl", "sbatch", "array"):
        lines.append(
            f"| {name} | {median[name]:.2f} s | {median[name] / items * 1000:.1f} ms | "
            f"{median[name] / median['sbatch']:.2f} | {median[name] / median['array']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batchctl")
    parser.add_argument("--slurm-conf", help="a running cluster's slurm.conf (else one is started)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    compile_bytecode()
    batchctl = find_batchctl(args.batchctl)
    with tempfile.TemporaryDirectory(prefix="slurm-bench-") as temp:
        root = Path(temp)
        cluster = root / "cluster"
        env = environment_without_tuning()
        if args.slurm_conf:
            conf = Path(args.slurm_conf)
        else:
            subprocess.run(
                [str(CLUSTER), "start", str(cluster), "n1", "n2"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            conf = cluster / "slurm.conf"
        try:
            version = subprocess.run(
                ["sinfo", "-V"],
                env={**env, "SLURM_CONF": str(conf)},
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            load = os.getloadavg()
            prepare(root, args.items, conf)
            times = measure(root, args.items, args.repeat, batchctl, conf)
        finally:
            if not args.slurm_conf:
                subprocess.run([str(CLUSTER), "stop", str(cluster)], env=env, check=True)
    text = report(times, args.items, args.repeat, load, version)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailed as exc:
        sys.exit(f"bench failed: {exc}")
