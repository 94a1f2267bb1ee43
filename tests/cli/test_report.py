"""batchctl report: a batch of real pytest runs merged into one JUnit file CI
tools accept (flaky and rerun failures marked), and a markdown summary."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    CliRunner,
    make_suite,
    run_batchctl,
    run_shared_batch,
    start_held_batch,
    stop_processes_of,
    wait_until,
    write_plan,
)
from tests.junit_check import cases, check_totals, suites, validate

# Each suite's run.sh runs the real pytest of this environment, writing its
# JUnit where batchctl collects artifacts (without the plugins this
# environment has installed: they only slow its start).
PYTEST_RUN = """#!/bin/sh
echo "attempt $BATCHCTL_ATTEMPT on $BATCHCTL_MACHINE"
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 exec "$PY" -m pytest -q -p no:cacheprovider -c /dev/null \\
  --junitxml="$BATCHCTL_ARTIFACTS_DIR/junit.xml" .
"""

UNIT_TESTS = """
import pytest

def test_adds():
    assert 1 + 1 == 2

@pytest.mark.skip(reason="not on this machine")
def test_elsewhere():
    pass
"""

# Fails the first time it runs (it leaves a marker outside the run), passes after.
FLAKY_TESTS = """
import os
import pathlib

def test_steady():
    pass

def test_first_time_unlucky():
    marker = pathlib.Path(os.environ["MARKERS"]) / "ran-once"
    if not marker.exists():
        marker.touch()
        raise AssertionError("first time unlucky")
"""

BROKEN_TESTS = """
def test_never():
    assert 1 == 2, "still broken"
"""

# No JUnit; output with colours and control characters XML 1.0 forbids.
PLAIN_FAIL = (
    "#!/bin/sh\n"
    "echo 'setting up'\n"
    "printf '\\033[31mred\\033[0m bell\\007 soh\\001 done\\n'\n"
    "exit 3\n"
)

# Passes without JUnit; leaves XML that is not JUnit, and a JUnit file with
# a DTD whose entities must never be expanded.
PLAIN_PASS = """#!/bin/sh
echo '<coverage line-rate="1"/>' > "$BATCHCTL_ARTIFACTS_DIR/coverage.xml"
cat > "$BATCHCTL_ARTIFACTS_DIR/evil.xml" <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE t [<!ENTITY a "expanded"><!ENTITY b "&a;&a;&a;">]>
<testsuite name="evil"><testcase classname="evil" name="&b;"/></testsuite>
EOF
echo fine
"""

PLAN = """
version: 1
defaults:
  env: {{PY: "{python}", MARKERS: "{markers}"}}
entries:
  - {{name: unit, dir: suites/unit}}
  - {{name: flaky, dir: suites/flaky, retries: 1, retry_on: [failed]}}
  - {{name: broken, dir: suites/broken, retries: 1, retry_on: [failed]}}
  - {{name: after-broken, dir: suites/unit, needs: [broken]}}
  - {{name: plain-fail, dir: suites/plain-fail}}
  - {{name: plain-pass, dir: suites/plain-pass}}
"""


@dataclass(frozen=True)
class Batch:
    id: str
    state_dir: Path
    root: Path


def pytest_suite(root: Path, name: str, tests: str) -> None:
    suite = make_suite(root / "suites", name, PYTEST_RUN)
    (suite / f"test_{name}.py").write_text(textwrap.dedent(tests))


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batch]:
    """One finished batch of real pytest runs, for every test of this module
    to report on (it takes a few seconds to run)."""
    root = tmp_path_factory.mktemp("report")
    state_dir, markers = root / "state", root / "markers"
    markers.mkdir()
    pytest_suite(root, "unit", UNIT_TESTS)
    pytest_suite(root, "flaky", FLAKY_TESTS)
    pytest_suite(root, "broken", BROKEN_TESTS)
    make_suite(root / "suites", "plain-fail", PLAIN_FAIL)
    make_suite(root / "suites", "plain-pass", PLAIN_PASS)
    write_plan(root, PLAN.format(python=sys.executable, markers=markers))
    try:
        ran = run_shared_batch(root)
        assert ran.code == 1, ran.stderr  # some items did not pass
        yield Batch(id=ran.json()["data"]["batch"]["id"], state_dir=state_dir, root=root)
    finally:
        stop_processes_of(root)


def report(cli: CliRunner, batch: Batch, *args: str) -> tuple[int, str, str]:
    result = cli("report", batch.id, "--state-dir", str(batch.state_dir), *args)
    return result.code, result.stdout, result.stderr


def test_the_report_merges_every_items_junit_and_attempts(
    cli: CliRunner, batch: Batch, tmp_path: Path
) -> None:
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()

    result = cli("report", batch.id, "--state-dir", str(batch.state_dir), "--junit", str(junit))

    assert result.code == 0, result.stderr  # written; the batch's failures are in the report
    root = validate(junit.read_bytes())
    check_totals(root)
    found = suites(root)
    assert list(found) == ["unit", "flaky", "broken", "after-broken", "plain-fail", "plain-pass"]
    assert (root.attrib["tests"], root.attrib["failures"], root.attrib["errors"]) == ("8", "2", "0")

    # pytest's own test cases, as it wrote them, on the machine that ran them.
    unit = cases(found["unit"])
    assert list(unit) == ["test_adds", "test_elsewhere"]
    assert unit["test_adds"].attrib["classname"] == "test_unit"
    assert list(unit["test_adds"]) == []
    skipped = unit["test_elsewhere"].find("skipped")
    assert skipped is not None
    assert skipped.attrib["message"] == "not on this machine"
    assert found["unit"].attrib["hostname"] == "local"
    properties = {
        prop.attrib["name"]: prop.attrib["value"] for prop in found["unit"].iter("property")
    }
    assert properties["batchctl.batch"] == batch.id
    assert properties["batchctl.junit_files"].endswith("/artifacts/junit.xml")

    # Failed on attempt 1, passed on attempt 2: a passed test, visibly flaky.
    flaky = cases(found["flaky"])
    assert [child.tag for child in flaky["test_first_time_unlucky"]] == ["flakyFailure"]
    trace = flaky["test_first_time_unlucky"].find("flakyFailure/stackTrace")
    assert trace is not None
    assert "first time unlucky" in (trace.text or "")
    assert list(flaky["test_steady"]) == []
    assert found["flaky"].attrib["failures"] == "0"

    # Failed on both attempts: the last attempt's failure, the first as a rerun.
    never = cases(found["broken"])["test_never"]
    assert [child.tag for child in never] == ["failure", "rerunFailure"]
    assert "still broken" in never[0].attrib["message"]

    # Never ran: skipped, with the code and the attempt to blame.
    after = cases(found["after-broken"])["after-broken"]
    skip = after.find("skipped")
    assert skip is not None
    assert skip.attrib["message"] == "dep_failed, because of broken#2"
    assert after.attrib["classname"] == "batchctl.plan"

    # No JUnit: the item is its own test case, with its exit code and log tail.
    plain = cases(found["plain-fail"])
    assert list(plain) == ["plain-fail"]
    failure = plain["plain-fail"].find("failure")
    assert failure is not None
    assert failure.attrib == {"message": "exit 3", "type": "failed"}
    text = failure.text or ""
    assert "setting up\nred bell\\x07 soh\\x01 done" in text
    assert f"log:       {batch.state_dir / 'runs'}/" in text

    # Passed without JUnit: one passing case. Its other XML is not JUnit; the
    # file with a DTD is refused, with a warning, and nothing was expanded.
    passed = cases(found["plain-pass"])
    assert list(passed) == ["plain-pass"]
    assert list(passed["plain-pass"]) == []
    assert "expanded" not in junit.read_text()
    assert "evil.xml has a document type declaration" in result.stderr
    assert "coverage.xml" not in result.stderr


def test_markdown_and_json_name_the_files_and_counts(
    cli: CliRunner, batch: Batch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHCTL_TEST_UMASK", "022")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    junit, markdown = out_dir / "junit.xml", out_dir / "summary.md"
    junit.write_text("an older report\n")

    code, out, err = report(
        cli, batch, "--junit", str(junit), "--markdown", str(markdown), "--json"
    )

    assert code == 0, err
    check_totals(validate(junit.read_bytes()))
    data = json.loads(out)["data"]
    assert data["written"] == {"junit": str(junit), "markdown": str(markdown), "html": None}
    assert data["tests"] == {
        "tests": 8,
        "failures": 2,
        "errors": 0,
        "skipped": 2,
        "flaky": 1,
        "time_s": data["tests"]["time_s"],
    }
    assert data["items"] == {"total": 6, "passed": 2, "flaky": 1, "failed": 2, "skipped": 1}
    assert data["done"] is True
    assert any("evil.xml" in warning for warning in data["warnings"])
    # Replaced whole, with the user's umask rather than batchctl's private one.
    assert stat.S_IMODE(junit.stat().st_mode) == 0o644
    assert sorted(path.name for path in out_dir.iterdir()) == ["junit.xml", "summary.md"]

    text = markdown.read_text()
    assert f"### batchctl report: batch `{batch.id}`" in text
    assert "6 items: 2 passed, 1 flaky, 2 failed, 1 skipped" in text
    assert "Tests: 8 — 2 failures, 0 errors, 2 skipped, 1 flaky" in text
    rows = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| item ")
    }
    assert list(rows) == ["flaky", "broken", "after-broken", "plain-fail"]
    assert rows["flaky"].startswith(
        "| flaky | flaky | local | 2 | passed on attempt 2 after #1 exit"
    )
    assert "failing: test_broken.test_never" in rows["broken"]
    assert (
        "| after-broken | skipped |  | 0 | dep_failed, because of broken#2 |"
        in rows["after-broken"]
    )
    assert rows["plain-fail"].startswith("| plain-fail | failed | local | 1 | exit 3 |")
    assert "output.log`" in rows["plain-fail"]


def test_a_report_needs_a_file_to_write(cli: CliRunner, batch: Batch) -> None:
    code, _, err = report(cli, batch)
    assert code == 2
    assert "report needs --junit FILE, --markdown FILE or --html FILE" in err

    code, _, err = report(cli, batch, "--junit", "same.xml", "--markdown", "same.xml", "--json")
    assert code == 2
    assert "name the same file" in err


def test_an_unknown_batch_is_not_found(cli: CliRunner, batch: Batch, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    result = cli(
        "report", "nope-1234", "--state-dir", str(batch.state_dir), "--junit", str(junit), "--json"
    )
    assert result.code == 3
    assert result.error()["error"]["code"] == "not_found"
    assert not junit.exists()


def test_an_unwritable_path_is_named_and_nothing_is_written(batch: Batch, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    markdown = out / "summary.md"
    a_file = out / "a-file"
    a_file.write_text("")
    read_only = out / "read-only"
    read_only.mkdir(mode=0o500)
    unwritable = [
        (out / "missing" / "junit.xml", f"the directory {out / 'missing'} does not exist"),
        (a_file / "junit.xml", "Not a directory"),
        (out, "it is a directory"),
        # Not writable even for root, who may write anywhere else (CI runs tests as root).
        (Path("/sys/batchctl-junit.xml"), ": cannot write the report: "),
    ]
    if os.geteuid() != 0:
        unwritable.append((read_only / "junit.xml", "Permission denied"))
    for target, reason in unwritable:
        # A real process: what CI runs, with no traceback and its own exit code.
        result = run_batchctl(
            "report",
            batch.id,
            "--state-dir",
            str(batch.state_dir),
            "--junit",
            str(target),
            "--markdown",
            str(markdown),
        )
        assert result.code == 4, result.stderr
        assert result.stderr.startswith(f"batchctl: error: --junit {target}: cannot write"), (
            result.stderr
        )
        assert reason in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert not markdown.exists()  # all or nothing
    assert sorted(path.name for path in out.iterdir()) == ["a-file", "read-only"]
    assert list(read_only.iterdir()) == []


def test_an_unfinished_batch_is_reported_with_its_unfinished_items_as_errors(
    cli: CliRunner, workdir: Path
) -> None:
    batch_id, release = start_held_batch(workdir)

    def outcome_of(name: str) -> str:
        view = cli("status", batch_id, "--json").json()["data"]["batch"]
        return str(next(item["outcome"] for item in view["items"] if item["name"] == name))

    try:
        wait_until(lambda: outcome_of("quick") == "passed" and outcome_of("slow") == "running")
        result = cli("report", batch_id, "--junit", "junit.xml", "--json")
    finally:
        release.touch()

    assert result.code == 0, result.stderr
    assert result.json()["data"]["done"] is False
    assert "is not finished" in result.stderr
    root = validate((workdir / "junit.xml").read_bytes())
    check_totals(root)
    found = suites(root)
    slow = cases(found["slow"])["slow"]
    assert [child.tag for child in slow] == ["error"]
    assert slow[0].attrib["type"] == "not_finished"
    after = cases(found["after"])["after"]
    assert after[0].attrib["message"].startswith("not finished: waiting on slow")
    assert list(cases(found["quick"])["quick"]) == []
    wait_until(lambda: outcome_of("after") == "passed")
