"""The real engine at scale: N items on M simulated machines, end to end.

Simulated machines (``transport: sim``, no ``duration``) end every run at
once, succeeded, without starting a process, so what is measured is the
engine alone: the command line, the detached worker, the state files and the
views, each through the real ``batchctl`` executable.

Scenarios, one table each:
  batch    -- ``batchctl run PLAN --wait`` of N items (default 100,000) on M
              simulated machines of 1 slot (default 1,000): the wall time of
              the whole command; the worker's own figures, from the stats
              line it logs when done (load_s, steps, longest_step_s,
              state_bytes_written, peak_rss_kib; over every worker the batch
              had, if more than one); the size of the state files on disk at
              the end; and ``batchctl status ID --json`` of that batch, once
              no worker of it is left running.
  status   -- ``batchctl status ID --json`` of a separate 1,000-item batch
              run on the same fleet in a state directory of its own.
  startup  -- ``batchctl --version`` against ``python -c pass`` on the
              interpreter running this script (sys.executable), alternately.

Each line shows its target and whether it is met. The worker's
state_bytes_written counts what the worker wrote; the ``run`` command also
writes (it creates the batch), and the journals are compacted into
snapshots, so neither figure is the sum of the other: the sizes on disk at
the end are given separately. Units are decimal (1 KB = 1,000 bytes,
1 MB = 1,000,000 bytes).

Every BATCHCTL_* variable of the caller's environment is dropped, so the
engine runs with its defaults; the state directory is given with
--state-dir. Everything lives in a temporary directory removed at the end. A
command that does not exit 0 (some item did not pass), or a worker that ends
without its stats line, fails the bench; the temporary directory is then
kept, and named, so its logs can be read. A missed target does not fail the
bench unless --strict is given.

    .venv/bin/python bench/engine_scale.py --items 10000 --machines 100
    .venv/bin/python bench/engine_scale.py --items 100000 --machines 1000
    .venv/bin/python bench/engine_scale.py --out /tmp/engine_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
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

STAGING = "bench"
SMALL_ITEMS = 1000  # the separate batch whose status view must stay quick
STATE_FILES = ("batches.json", "batches.journal", "runs.json", "runs.journal")
STATS_RE = re.compile(
    r"^stats: load_s=(?P<load_s>[0-9.]+) steps=(?P<steps>\d+) "
    r"longest_step_s=(?P<longest_step_s>[0-9.]+) "
    r"state_bytes_written=(?P<written>\d+) peak_rss_kib=(?P<peak_kib>\d+)$"
)
STATS_GRACE_S = 60.0  # how long the worker may take to log its stats once the batch is done

# Targets (decimal units).
RUN_WAIT_TARGET_S = 60.0
LONGEST_STEP_TARGET_S = 1.0
BYTES_PER_ITEM_TARGET = 2_000
PEAK_RSS_TARGET_MB = 500.0
STATUS_TARGET_S = 1.0
SMALL_STATUS_TARGET_S = 0.15
STARTUP_RATIO_TARGET = 2.0


@dataclass(frozen=True)
class Layout:
    """One plan over a shared suite, its fleet and a state directory."""

    root: Path
    plan: Path
    fleet: Path
    state: Path


def write_fleet(path: Path, machines: int) -> Path:
    width = max(4, len(str(machines)))
    lines = ["machines:"]
    lines += [
        f"  - {{name: sim{n:0{width}d}, transport: sim, tags: [local], slots: 1}}"
        for n in range(1, machines + 1)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def build(root: Path, items: int, fleet: Path) -> Layout:
    suite = root / "suites" / "t"
    suite.mkdir(parents=True)
    script = suite / "run.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    width = max(6, len(str(items)))
    lines = ["version: 1", "entries:"]
    lines += [f"  - {{name: t{n:0{width}d}, dir: suites/t}}" for n in range(1, items + 1)]
    plan = root / "plan.yaml"
    plan.write_text("\n".join(lines) + "\n")
    return Layout(root=root, plan=plan, fleet=fleet, state=root / "state")


def state_args(layout: Layout) -> list[str]:
    return ["--state-dir", str(layout.state), "--fleet", str(layout.fleet)]


def run_argv(batchctl: Path, layout: Layout) -> list[str]:
    return [
        str(batchctl),
        "run",
        str(layout.plan),
        "--staging",
        STAGING,
        "--wait",
        "--quiet",
        "--json",
        *state_args(layout),
    ]


def status_argv(batchctl: Path, layout: Layout, batch_id: str) -> list[str]:
    return [str(batchctl), "status", batch_id, "--json", *state_args(layout)]


def finished_batch(out: Path, items: int) -> str:
    """The batch id from ``run --json``, once its counts say every item passed."""
    document = json.loads(out.read_text())
    batch = document["data"]["batch"]
    counts = batch["counts"]
    if counts != {"passed": items}:
        raise BenchFailed(f"batch {batch['id']}: expected {items} passed, got {counts}")
    return str(batch["id"])


@dataclass(frozen=True)
class WorkerStats:
    line: str
    load_s: float
    steps: int
    longest_step_s: float
    state_bytes_written: int
    peak_rss_kib: int


@dataclass(frozen=True)
class Workers:
    """Every worker that served the batch, from the stats lines of its log.

    The log is appended to by each worker started for the batch; more than
    one may be, e.g. when a waiting command takes the batch over at the very
    end. The figures that have a target are taken over all of them: the
    bytes summed, the longest step and the peak memory the largest."""

    stats: tuple[WorkerStats, ...]

    @property
    def load_s(self) -> float:
        return max(w.load_s for w in self.stats)

    @property
    def steps(self) -> int:
        return sum(w.steps for w in self.stats)

    @property
    def longest_step_s(self) -> float:
        return max(w.longest_step_s for w in self.stats)

    @property
    def state_bytes_written(self) -> int:
        return sum(w.state_bytes_written for w in self.stats)

    @property
    def peak_rss_kib(self) -> int:
        return max(w.peak_rss_kib for w in self.stats)


def parse_stats(line: str) -> WorkerStats | None:
    match = STATS_RE.match(line)
    if match is None:
        return None
    return WorkerStats(
        line=line,
        load_s=float(match["load_s"]),
        steps=int(match["steps"]),
        longest_step_s=float(match["longest_step_s"]),
        state_bytes_written=int(match["written"]),
        peak_rss_kib=int(match["peak_kib"]),
    )


def workers_running(state: Path, batch_id: str) -> bool:
    """Whether a worker process of this batch and state directory is alive
    (read from /proc; where there is none, the log alone decides)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"_batch-worker" in argv and batch_id.encode() in argv and str(state).encode() in argv:
            return True
    return False


def worker_stats(state: Path, batch_id: str, grace_s: float) -> Workers:
    """The stats lines of the batch's worker log, once no worker of the batch
    is left running; ``run --wait`` may return a moment before the worker
    writes its line."""
    log = state / "workers" / f"{batch_id}.log"
    deadline = time.perf_counter() + grace_s
    while True:
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        found = tuple(w for w in map(parse_stats, lines) if w is not None)
        if found and not workers_running(state, batch_id):
            # Read again: a worker may have written its last line as it ended.
            lines = log.read_text(errors="replace").splitlines()
            return Workers(tuple(w for w in map(parse_stats, lines) if w is not None))
        if time.perf_counter() > deadline:
            last = lines[-1] if lines else "(no log)"
            raise BenchFailed(
                f"worker of {batch_id} not done with its stats line after {grace_s:g} s; "
                f"last line of {log}: {last}"
            )
        time.sleep(0.1)


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"median of {len(self.seconds)}; {secs(min(self.seconds))}-{secs(max(self.seconds))}"


def time_status(
    batchctl: Path,
    layout: Layout,
    batch_id: str,
    env: dict[str, str],
    repeat: int,
    timeout_s: float,
) -> Samples:
    samples = Samples()
    for _ in range(repeat):
        samples.seconds.append(
            timed_run(
                status_argv(batchctl, layout, batch_id), env, layout.root / "status.json", timeout_s
            )
        )
    return samples


def file_sizes(state: Path) -> dict[str, int | None]:
    sizes = {
        name: (state / name).stat().st_size if (state / name).is_file() else None
        for name in STATE_FILES
    }
    # The final view its worker wrote when the batch finished (counted in
    # the worker's state_bytes_written too).
    views = state / "views"
    sizes["views/"] = (
        sum(path.stat().st_size for path in views.iterdir()) if views.is_dir() else None
    )
    return sizes


@dataclass(frozen=True)
class BatchResult:
    items: int
    machines: int
    wall_s: float
    worker: Workers
    sizes: dict[str, int | None]
    status: Samples


@dataclass(frozen=True)
class SmallResult:
    items: int
    wall_s: float
    status: Samples


@dataclass(frozen=True)
class StartupResult:
    version: Samples
    python: Samples


def run_batch(
    batchctl: Path, layout: Layout, items: int, env: dict[str, str], timeout_s: float
) -> tuple[float, str]:
    out = layout.root / "run.json"
    wall_s = timed_run(run_argv(batchctl, layout), env, out, timeout_s)
    return wall_s, finished_batch(out, items)


def measure_batch(
    batchctl: Path,
    layout: Layout,
    *,
    items: int,
    machines: int,
    env: dict[str, str],
    repeat: int,
    timeout_s: float,
) -> BatchResult:
    wall_s, batch_id = run_batch(batchctl, layout, items, env, timeout_s)
    note(f"batch: {items} items on {machines} machines, run --wait {wall_s:.2f} s")
    worker = worker_stats(layout.state, batch_id, STATS_GRACE_S)
    sizes = file_sizes(layout.state)
    status = time_status(batchctl, layout, batch_id, env, repeat, timeout_s)
    note(f"batch: status --json {status.median:.3f} s")
    return BatchResult(items, machines, wall_s, worker, sizes, status)


def measure_small(
    batchctl: Path, layout: Layout, env: dict[str, str], repeat: int, timeout_s: float
) -> SmallResult:
    wall_s, batch_id = run_batch(batchctl, layout, SMALL_ITEMS, env, timeout_s)
    worker_stats(layout.state, batch_id, STATS_GRACE_S)  # status reads a batch nobody writes
    status = time_status(batchctl, layout, batch_id, env, repeat, timeout_s)
    note(f"status: {SMALL_ITEMS}-item batch, status --json {status.median:.3f} s")
    return SmallResult(SMALL_ITEMS, wall_s, status)


def measure_startup(
    batchctl: Path, env: dict[str, str], out: Path, repeat: int, timeout_s: float
) -> StartupResult:
    version, python = Samples(), Samples()
    version_argv = [str(batchctl), "--version"]
    python_argv = [sys.executable, "-c", "pass"]
    # One untimed pair first, then alternately, so a drift touches both.
    for i in range(repeat + 1):
        v = timed_run(version_argv, env, out, timeout_s)
        p = timed_run(python_argv, env, out, timeout_s)
        if i:
            version.seconds.append(v)
            python.seconds.append(p)
    note(f"startup: --version {version.median:.3f} s, python -c pass {python.median:.3f} s")
    return StartupResult(version, python)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def secs(value: float) -> str:
    return f"{value:.2f} s" if value >= 10 else f"{value:.3f} s"


def size(value: int | None) -> str:
    if value is None:
        return "absent"
    return f"{value / 1e6:.1f} MB ({value:,} B)"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


@dataclass
class Table:
    rows: list[str] = field(default_factory=list)
    missed: int = 0

    def target(self, measure: str, value: str, target: str, ok: bool) -> None:
        self.missed += not ok
        self.rows.append(f"| {measure} | {value} | {target} | {verdict(ok)} |")

    def info(self, measure: str, value: str) -> None:
        self.rows.append(f"| {measure} | {value} | - | |")

    def lines(self) -> list[str]:
        return ["| measure | value | target | met |", "|---|---:|---:|---|", *self.rows]


def batch_table(r: BatchResult) -> Table:
    t = Table()
    w = r.worker
    per_item = w.state_bytes_written / r.items
    peak_mb = w.peak_rss_kib * 1024 / 1e6
    t.target(
        "`run --wait` wall time",
        secs(r.wall_s),
        f"≤ {RUN_WAIT_TARGET_S:g} s",
        r.wall_s <= RUN_WAIT_TARGET_S,
    )
    t.info("workers that served the batch (stats lines in its log)", str(len(w.stats)))
    if len(w.stats) > 1:
        for n, one in enumerate(w.stats, 1):
            t.info(f"worker {n} of {len(w.stats)}", f"`{one.line}`")
    t.info("worker load_s (largest)", secs(w.load_s))
    t.info("worker steps (all workers)", f"{w.steps:,}")
    t.target(
        "worker longest_step_s",
        secs(w.longest_step_s),
        f"≤ {LONGEST_STEP_TARGET_S:g} s",
        w.longest_step_s <= LONGEST_STEP_TARGET_S,
    )
    t.info("worker state_bytes_written (all workers)", size(w.state_bytes_written))
    t.target(
        "worker state bytes written per item",
        f"{per_item:,.0f} B",
        f"≤ {BYTES_PER_ITEM_TARGET / 1000:g} KB",
        per_item <= BYTES_PER_ITEM_TARGET,
    )
    t.target(
        "worker peak RSS",
        f"{peak_mb:.0f} MB",
        f"≤ {PEAK_RSS_TARGET_MB:g} MB",
        peak_mb <= PEAK_RSS_TARGET_MB,
    )
    for name, value in r.sizes.items():
        t.info(f"`{name}` on disk at the end", size(value))
    t.info("state files on disk, total", size(sum(v or 0 for v in r.sizes.values())))
    t.target(
        f"`status ID --json` ({r.status.spread()})",
        secs(r.status.median),
        f"≤ {STATUS_TARGET_S:g} s",
        r.status.median <= STATUS_TARGET_S,
    )
    return t


def small_table(r: SmallResult) -> Table:
    t = Table()
    t.info("`run --wait` wall time", secs(r.wall_s))
    t.target(
        f"`status ID --json` ({r.status.spread()})",
        secs(r.status.median),
        f"≤ {SMALL_STATUS_TARGET_S:g} s",
        r.status.median <= SMALL_STATUS_TARGET_S,
    )
    return t


def startup_table(r: StartupResult) -> Table:
    t = Table()
    ratio = r.version.median / r.python.median
    t.info(f"`batchctl --version` ({r.version.spread()})", secs(r.version.median))
    t.info(f"`python -c pass` ({r.python.spread()})", secs(r.python.median))
    t.target(
        "ratio (median over median)",
        f"{ratio:.2f}x",
        f"≤ {STARTUP_RATIO_TARGET:g}x",
        ratio <= STARTUP_RATIO_TARGET,
    )
    return t


def markdown(
    tables: Sequence[tuple[str, Table]], *, command: str, batchctl_version: str, load: str
) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The date the figures were taken, for the record; the bench reads the real clock.
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")  # noqa: TID251
    missed = sum(t.missed for _, t in tables)
    lines = [
        "### Engine at scale (`bench/engine_scale.py`)",
        "",
        f"{now}, {cores} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{batchctl_version}, no BATCHCTL_* variables (engine defaults). Simulated machines "
        f"(`transport: sim`, 1 slot each, runs end at once, succeeded); wall time of each "
        "whole command; worker figures from the stats line(s) of its log. 1 KB = 1,000 B, "
        f"1 MB = 1,000,000 B. Load average (1, 5, 15 min) before the bench began: {load}.",
        "",
    ]
    for title, table in tables:
        lines += [f"#### {title}", "", *table.lines(), ""]
    lines += [
        f"Targets missed: {missed}." if missed else "Every target met.",
        "",
        "Reproduce (from the repository root):",
        "",
        f"    {command}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Measure batchctl's engine end to end on simulated machines."
    )
    parser.add_argument("--items", type=int, default=100_000, help="items in the batch")
    parser.add_argument("--machines", type=int, default=1000, help="simulated machines, 1 slot")
    parser.add_argument(
        "--status-repeat", type=int, default=5, help="timed status calls per batch (default 5)"
    )
    parser.add_argument(
        "--startup-repeat", type=int, default=10, help="timed runs of each start-up command"
    )
    parser.add_argument("--timeout", type=float, default=900, help="bound on one run, seconds")
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--batchctl", help="batchctl executable (default: beside this python)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    for option in ("items", "machines", "status_repeat", "startup_repeat"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")

    # Another busy process on the machine shows in every figure: say so.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    batchctl = find_batchctl(args.batchctl)
    compile_bytecode()
    env = environment_without_tuning()
    command = shlex.join(
        [
            ".venv/bin/python",
            "bench/engine_scale.py",
            "--items",
            str(args.items),
            "--machines",
            str(args.machines),
            "--status-repeat",
            str(args.status_repeat),
            "--startup-repeat",
            str(args.startup_repeat),
        ]
    )
    tmp = Path(tempfile.mkdtemp(prefix="engine_scale-"))
    try:
        version_out = tmp / "version.txt"
        timed_run([str(batchctl), "--version"], env, version_out, args.timeout)
        batchctl_version = version_out.read_text().strip()
        fleet = write_fleet(tmp / "fleet.yaml", args.machines)
        big = measure_batch(
            batchctl,
            build(tmp / "batch", args.items, fleet),
            items=args.items,
            machines=args.machines,
            env=env,
            repeat=args.status_repeat,
            timeout_s=args.timeout,
        )
        small = measure_small(
            batchctl,
            build(tmp / "small", SMALL_ITEMS, fleet),
            env,
            args.status_repeat,
            args.timeout,
        )
        startup = measure_startup(
            batchctl, env, tmp / "startup.txt", args.startup_repeat, args.timeout
        )
    except BenchFailed as exc:
        # The failed run's state directory (worker log, crash report) is kept to be read.
        sys.exit(f"benchmark run failed: {exc}\nfiles kept in {tmp}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    tables = [
        (f"batch: {args.items:,} items on {args.machines:,} simulated machines", batch_table(big)),
        (
            f"status: a separate {SMALL_ITEMS:,}-item batch on the same fleet, own state dir",
            small_table(small),
        ),
        (
            f"startup: `batchctl --version` vs `{Path(sys.executable).name} -c pass` "
            "(same interpreter)",
            startup_table(startup),
        ),
    ]
    report = markdown(tables, command=command, batchctl_version=batchctl_version, load=load)
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    if args.strict and any(t.missed for _, t in tables):
        sys.exit("targets missed (--strict)")


if __name__ == "__main__":
    main()
