"""End-to-end local throughput: ``batchctl run --wait`` against GNU Parallel.

Both sides run the same ``run.sh`` scripts on this machine, in the same call,
alternately (batchctl, parallel, batchctl, parallel, ...), so a drift in the
machine's speed touches both. Each figure is the wall time of the whole
command, start-up included, read with ``time.perf_counter``.

Scenarios:
  trivial -- N items (default 1000) whose run.sh is ``true``; a fleet of one
             local machine with 2 slots against ``parallel -j2``. This is
             the engine's own cost per item: the tests cost nothing.
  sleep   -- 40 items of ``sleep 0.5`` on 4 slots; the ideal is
             ceil(40 / 4) * 0.5 s = 5.0 s, and ``parallel -j4`` is the peer.
             This is how close the engine keeps the slots busy.

--items and --slots replace the scenario's own defaults (for every scenario
run). batchctl gets a fresh state directory for each timed run, removed only
once the scenario is over (see ``measure``), and BATCHCTL_TICK=1 (its
default); every other BATCHCTL_* variable of the caller's environment is
dropped, so the bench never tunes the engine.
Everything lives in a temporary directory removed at the end. A batchctl run
that does not exit 0 (some item did not pass), or a parallel run that does
not, fails the bench; the temporary directory is then kept, and named, so its
logs and crash report can be read.

    .venv/bin/python bench/local_throughput.py --scenario trivial --items 100 --repeat 3
    .venv/bin/python bench/local_throughput.py --scenario sleep --repeat 1
    .venv/bin/python bench/local_throughput.py --out /tmp/local_throughput.md

To time the two commands with an outside whole-process timer instead, have
the script write a scenario's files into a directory it keeps, and print the
two command lines (batchctl with ``--new`` into one state directory)::

    .venv/bin/python bench/local_throughput.py --scenario trivial --items 100 \\
        --prepare /tmp/lt

which prints, for that directory, the pair to hand to any timer, e.g.::

    /usr/bin/time -v env BATCHCTL_TICK=1 .venv/bin/batchctl run \\
        /tmp/lt/trivial/plan.yaml --staging bench --new --wait --quiet \\
        --state-dir /tmp/lt/trivial/state --fleet /tmp/lt/trivial/fleet.yaml
    /usr/bin/time -v parallel --will-cite -j2 --arg-file /tmp/lt/trivial/scripts.txt
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    BenchFailed,
    compile_bytecode,
    environment_without_tuning,
    find_batchctl,
    timed_run,
)

TICK_S = "1"  # batchctl's default tick, set explicitly so the caller's cannot leak in
STAGING = "bench"
SCENARIOS = ("trivial", "sleep")


@dataclass(frozen=True)
class Scenario:
    name: str
    items: int
    slots: int
    sleep_s: float  # 0 for the trivial `true`

    @property
    def body(self) -> str:
        command = f"sleep {self.sleep_s:g}" if self.sleep_s else "true"
        return f"#!/bin/sh\n{command}\n"

    @property
    def ideal_s(self) -> float | None:
        if not self.sleep_s:
            return None
        return math.ceil(self.items / self.slots) * self.sleep_s

    def title(self) -> str:
        command = f"sleep {self.sleep_s:g}" if self.sleep_s else "true"
        return f"{self.name}: {self.items} x `{command}`, {self.slots} slots"


def scenario(name: str, items: int | None, slots: int | None) -> Scenario:
    if name == "trivial":
        return Scenario("trivial", items or 1000, slots or 2, 0.0)
    return Scenario("sleep", items or 40, slots or 4, 0.5)


@dataclass(frozen=True)
class Layout:
    """One scenario's files: the plan and its suites, the fleet, and the list
    of the same run.sh scripts for parallel."""

    root: Path
    plan: Path
    fleet: Path
    scripts: Path


def build(root: Path, sc: Scenario) -> Layout:
    suites = root / "suites"
    suites.mkdir(parents=True)
    width = max(4, len(str(sc.items)))
    lines = ["version: 1", "entries:"]
    paths = []
    for n in range(1, sc.items + 1):
        name = f"t{n:0{width}d}"
        test_dir = suites / name
        test_dir.mkdir()
        script = test_dir / "run.sh"
        script.write_text(sc.body)
        script.chmod(0o755)
        lines += [f"  - name: {name}", f"    dir: suites/{name}"]
        paths.append(shlex.quote(str(script)))
    plan = root / "plan.yaml"
    plan.write_text("\n".join(lines) + "\n")
    fleet = root / "fleet.yaml"
    fleet.write_text(
        "machines:\n"
        "  - name: local\n"
        "    transport: local\n"
        "    tags: [local]\n"
        f"    slots: {sc.slots}\n"
    )
    scripts = root / "scripts.txt"
    scripts.write_text("\n".join(paths) + "\n")
    return Layout(root=root, plan=plan, fleet=fleet, scripts=scripts)


def batchctl_argv(batchctl: Path, layout: Layout, state_dir: Path) -> list[str]:
    return [
        str(batchctl),
        "run",
        str(layout.plan),
        "--staging",
        STAGING,
        "--new",
        "--wait",
        "--quiet",
        "--state-dir",
        str(state_dir),
        "--fleet",
        str(layout.fleet),
    ]


def parallel_argv(parallel: Path, layout: Layout, slots: int) -> list[str]:
    # With no command, parallel runs each line of the file as a command.
    return [str(parallel), "--will-cite", f"-j{slots}", "--arg-file", str(layout.scripts)]


def bench_environment() -> dict[str, str]:
    env = environment_without_tuning()
    env["BATCHCTL_TICK"] = TICK_S
    return env


@dataclass
class Samples:
    label: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    batchctl: Samples
    parallel: Samples

    def pair_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.batchctl.seconds, self.parallel.seconds, strict=True)]


def measure(
    sc: Scenario,
    layout: Layout,
    *,
    batchctl: Path,
    parallel: Path,
    repeat: int,
    warmup: int,
    timeout_s: float,
) -> Result:
    env = bench_environment()
    a = Samples(f"batchctl run --wait ({sc.slots} slots)")
    b = Samples(f"parallel -j{sc.slots}")
    # Every run's state directory stays until the scenario is over. ext4
    # without a journal does not reuse an inode freed in the last minute (five
    # while its table block is unwritten): a file created right after a mass
    # delete first walks past every inode the delete freed. Removing a run's
    # thousands of files between timed runs made the next runs of both
    # commands (GNU Parallel buffers output in temporary files) pay for the
    # bench's own clean-up, which is nothing a user's run does.
    state_dirs: list[Path] = []
    for i in range(warmup + repeat):
        state_dir = layout.root / f"state-{i}"
        state_dirs.append(state_dir)
        a_s = timed_run(
            batchctl_argv(batchctl, layout, state_dir), env, layout.root / "batchctl.log", timeout_s
        )
        b_s = timed_run(
            parallel_argv(parallel, layout, sc.slots), env, layout.root / "parallel.log", timeout_s
        )
        counted = i >= warmup
        if counted:
            a.seconds.append(a_s)
            b.seconds.append(b_s)
        tag = f"{i - warmup + 1}/{repeat}" if counted else f"warm-up {i + 1}/{warmup}"
        print(
            f"{sc.name} {tag}: batchctl {a_s:.3f} s, parallel {b_s:.3f} s, ratio {a_s / b_s:.1f}",
            file=sys.stderr,
            flush=True,
        )
    for state_dir in state_dirs:
        shutil.rmtree(state_dir, ignore_errors=True)
    return Result(sc, a, b)


def secs(value: float) -> str:
    return f"{value:.2f} s" if value >= 10 else f"{value:.3f} s"


def markdown(results: Sequence[Result], command: str, repeat: int, warmup: int) -> str:
    parallel_version = subprocess.run(
        ["parallel", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The date the figures were taken, for the record; the bench reads the real clock.
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")  # noqa: TID251
    lines = [
        "### Local throughput (`bench/local_throughput.py`)",
        "",
        f"{now}, {cores} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{parallel_version[0] if parallel_version else 'GNU parallel'}, BATCHCTL_TICK={TICK_S}. "
        f"Wall time of each whole command, {repeat} timed run(s) each after {warmup} "
        "warm-up pair(s), batchctl and parallel alternately; ratio = median over median "
        "(in brackets: the range of the run-by-run ratios).",
        "",
        "| scenario | command | runs | median | min | max | ratio |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        a, b, ideal = r.batchctl, r.parallel, r.scenario.ideal_s
        pairs = r.pair_ratios()
        vs_parallel = f"{a.median / b.median:.1f}x parallel ({min(pairs):.1f}-{max(pairs):.1f})"
        if ideal is None:
            a_ratio, b_ratio = vs_parallel, "1"
        else:
            a_ratio = f"{a.median / ideal:.2f}x ideal; {vs_parallel}"
            b_ratio = f"{b.median / ideal:.2f}x ideal"
        for i, (s, ratio) in enumerate(((a, a_ratio), (b, b_ratio))):
            lines.append(
                f"| {r.scenario.title() if i == 0 else ''} | {s.label} | {len(s.seconds)} "
                f"| {secs(s.median)} | {secs(min(s.seconds))} | {secs(max(s.seconds))} "
                f"| {ratio} |"
            )
        if ideal is not None:
            lines.append(
                f"| | ideal: ceil({r.scenario.items}/{r.scenario.slots}) x "
                f"{r.scenario.sleep_s:g} s | - | {secs(ideal)} | | | 1 |"
            )
    lines += ["", "Reproduce (from the repository root):", "", f"    {command}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time batchctl's local end-to-end path against GNU Parallel, same scripts."
    )
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument(
        "--items", type=int, help="number of items (default: trivial 1000, sleep 40)"
    )
    parser.add_argument("--slots", type=int, help="slots and -j (default: trivial 2, sleep 4)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs before (default 1)")
    parser.add_argument("--timeout", type=float, default=1800, help="bound on one run, seconds")
    parser.add_argument("--out", type=Path, help="also write the markdown snippet to this file")
    parser.add_argument("--batchctl", help="batchctl executable (default: beside this python)")
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="only write the scenarios' files into DIR (kept) and print the two commands",
    )
    args = parser.parse_args()
    for option in ("items", "slots", "repeat"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")

    batchctl = find_batchctl(args.batchctl)
    compile_bytecode()
    found_parallel = shutil.which("parallel")
    if found_parallel is None:
        sys.exit("GNU parallel not found on PATH")
    parallel = Path(found_parallel)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    chosen = [scenario(name, args.items, args.slots) for name in names]

    if args.prepare is not None:
        for sc in chosen:
            layout = build(args.prepare.absolute() / sc.name, sc)
            print(f"# {sc.title()}")
            print(
                f"env BATCHCTL_TICK={TICK_S} "
                + shlex.join(batchctl_argv(batchctl, layout, layout.root / "state"))
            )
            print(shlex.join(parallel_argv(parallel, layout, sc.slots)))
        return

    command = shlex.join(
        [
            ".venv/bin/python",
            "bench/local_throughput.py",
            "--scenario",
            args.scenario,
            *(["--items", str(args.items)] if args.items else []),
            *(["--slots", str(args.slots)] if args.slots else []),
            "--repeat",
            str(args.repeat),
            "--warmup",
            str(args.warmup),
        ]
    )
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="local_throughput-"))
    try:
        for sc in chosen:
            layout = build(tmp / sc.name, sc)
            results.append(
                measure(
                    sc,
                    layout,
                    batchctl=batchctl,
                    parallel=parallel,
                    repeat=args.repeat,
                    warmup=args.warmup,
                    timeout_s=args.timeout,
                )
            )
    except BenchFailed as exc:
        # The failed run's state directory (logs, crash report) is kept to be read.
        sys.exit(f"benchmark run failed: {exc}\nfiles kept in {tmp}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    report = markdown(results, command, args.repeat, args.warmup)
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
