"""What a CI log shows: a timestamped line per item event while the batch
runs, each failed item's log tail at the end, and under GitHub Actions the
annotations and the step summary."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import make_suite, run_batchctl, write_plan

PLAN = """
version: 1
entries:
  - {name: ok, dir: suites/ok}
  - {name: bad, dir: suites/bad}
  - {name: after-bad, dir: suites/ok, needs: [bad]}
  - {name: flaky, dir: suites/flaky, retries: 1, retry_on: [failed]}
"""

CLOCK = r"\d\d:\d\d:\d\d"


def mixed_batch(workdir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    lines = "".join(f"echo 'line {n}'\n" for n in range(1, 41))
    make_suite(workdir / "suites", "bad", f"#!/bin/sh\n{lines}echo 'it broke' >&2\nexit 3\n")
    make_suite(workdir / "suites", "flaky", '#!/bin/sh\n[ "$BATCHCTL_ATTEMPT" -ge 2 ] || exit 1\n')
    write_plan(workdir, PLAN)


def test_a_piped_run_logs_each_item_event_and_the_failures_at_the_end(workdir: Path) -> None:
    mixed_batch(workdir)
    summary = workdir / "summary.md"
    summary.write_text("earlier steps\n")

    waited = run_batchctl(
        "run",
        "plan.yaml",
        "--wait",
        cwd=workdir,
        env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
    )

    assert waited.code == 1, waited.stderr
    out = waited.stdout
    for event in (
        r"start ok#1 on local",
        r"pass ok#1 on local \(\d+\.\ds\)",
        r"FAIL bad#1 on local exit 3 \(\d+\.\ds\)",
        r"skip after-bad \(dep_failed, because of bad#1\)",
        r"FAIL flaky#1 on local exit 1 \(\d+\.\ds\); retrying \(attempt 2 of 2\)",
        r"start flaky#2 on local",
        r"pass flaky#2 on local",
    ):
        assert re.search(rf"^{CLOCK} {event}", out, re.MULTILINE), event
    # Events in the order they happened: a retry after the failure it follows.
    assert out.index("FAIL flaky#1") < out.index("start flaky#2")
    # The failed item's end: where its log is, and its last 30 lines.
    report = out[out.index("--- bad#1 on local: failed (exit 3)") :]
    assert "log:       " in report
    tail = [
        line.removeprefix("    | ") for line in report.splitlines() if line.startswith("    | ")
    ]
    assert tail == [f"line {n}" for n in range(12, 41)] + ["it broke"]
    assert "::error title=bad failed::bad#1 on local: exit 3" in out
    written = summary.read_text()
    assert written.startswith("earlier steps\n### batchctl batch `")
    assert "| bad | 1 | local | failed | exit 3 |" in written


def test_json_mode_keeps_stdout_for_the_document(workdir: Path) -> None:
    mixed_batch(workdir)

    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)

    assert waited.json()["data"]["batch"]["done"] is True  # stdout: the document alone
    assert re.search(rf"^{CLOCK} FAIL bad#1 on local exit 3", waited.stderr, re.MULTILINE)
    assert "--- bad#1 on local: failed (exit 3)" in waited.stderr
    quiet = run_batchctl("run", "plan.yaml", "--new", "--wait", "--quiet", cwd=workdir)
    assert "start ok#1" not in quiet.stdout + quiet.stderr
    assert "---" not in quiet.stdout + quiet.stderr
