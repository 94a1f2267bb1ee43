"""The report's pure parts: reading JUnit safely, merging attempts, counting,
and writing XML CI tools accept."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

import pytest

from batchctl.model.junit import Refused, parse_junit, xml_text
from batchctl.model.report import (
    AttemptInput,
    ItemInput,
    Report,
    build_report,
    render_junit,
    render_markdown,
)
from tests.junit_check import cases, check_totals, suites, validate

START = "2026-11-22T05:00:00Z"
END = "2026-11-22T05:00:02.5Z"


def junit(*testcases: str) -> bytes:
    body = "".join(testcases)
    return f'<testsuites><testsuite name="s">{body}</testsuite></testsuites>'.encode()


PASS = '<testcase classname="m" name="t" time="0.5"/>'
FAIL = (
    '<testcase classname="m" name="t" time="0.5"><failure message="boom">trace</failure></testcase>'
)
OTHER = '<testcase classname="m" name="u" time="0.25"/>'


def attempt(number: int, status: str, document: bytes | None = None, **fields: Any) -> AttemptInput:
    parsed = parse_junit(document) if document is not None else None
    made = AttemptInput(
        attempt=number,
        run_id=f"run-{number}",
        machine=f"box-{number}",
        status=status,
        exit_code={"succeeded": 0, "failed": 1}.get(status),
        started_at=START,
        ended_at=END,
        log_path=f"/state/runs/run-{number}/output.log",
        artifacts_path=f"/state/runs/run-{number}/artifacts",
        log_tail=None if status == "succeeded" else "last words\n",
        cases=tuple(parsed) if parsed is not None else None,
    )
    return replace(made, **fields)


def item(
    name: str, *attempts: AttemptInput, outcome: str | None = None, **fields: Any
) -> ItemInput:
    last = attempts[-1].status if attempts else "skipped"
    made = ItemInput(
        name=name,
        selector="tag:linux",
        state="dispatched" if attempts else "skipped",
        outcome=outcome or {"succeeded": "passed"}.get(last, last),
        final=True,
        attempts=attempts,
    )
    return replace(made, **fields)


def report_of(*items: ItemInput, done: bool = True) -> tuple[ET.Element, Report]:
    """The report, rendered, valid for both schemas and with totals that add up."""
    report = build_report(
        batch_id="b1", source="plan:plans/nightly.yaml", staging="build-1", done=done, items=items
    )
    root = validate(render_junit(report))
    check_totals(root)
    return root, report


def first(element: ET.Element, tag: str) -> ET.Element:
    found = element.find(tag)
    assert found is not None, f"no {tag} in {ET.tostring(element)!r}"
    return found


def tags(element: ET.Element) -> list[str]:
    return [inner.tag for inner in element]


# -- reading ---------------------------------------------------------------


def test_a_dtd_is_refused_before_any_entity_is_expanded() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<testsuite name="s"><testcase name="&b;"/></testsuite>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE t SYSTEM "file:///etc/passwd">'
        b'<testsuite name="s"><testcase name="x"/></testsuite>'
    )
    for document in (bomb, external):
        with pytest.raises(Refused, match="document type declaration"):
            parse_junit(document)


def test_only_junit_roots_are_read_and_broken_xml_is_refused() -> None:
    assert parse_junit(b'<coverage line-rate="1"/>') is None
    with pytest.raises(Refused, match="not well-formed"):
        parse_junit(b"<testsuite><testcase name='cut off")
    with pytest.raises(Refused, match="not well-formed"):
        parse_junit(b"<testsuite>&undefined;</testsuite>")


def test_cases_of_nested_suites_keep_their_fields() -> None:
    parsed = parse_junit(
        b'<testsuite name="outer"><testsuite name="inner">'
        b'<testcase name="a" time="1,234.5"><skipped message="later"/>'
        b"<system-out>out</system-out><system-err>err</system-err></testcase>"
        b'</testsuite><testcase name="b" classname="k" time="nan"/></testsuite>'
    )
    assert parsed is not None
    by_name = {case.name: case for case in parsed}
    assert (by_name["a"].classname, by_name["a"].time_ms, by_name["a"].result) == (
        "inner",
        1_234_500,
        "skipped",
    )
    assert (by_name["a"].system_out, by_name["a"].system_err) == ("out", "err")
    assert (by_name["b"].classname, by_name["b"].time_ms, by_name["b"].result) == ("k", 0, "passed")


def test_text_xml_cannot_carry_is_dropped_or_escaped() -> None:
    assert xml_text("plain\ttext\n") == "plain\ttext\n"
    assert (
        xml_text("\x1b[31mred\x1b[0m bell\x07 nul\x00 \ufffe") == "red bell\\x07 nul\\x00 \\ufffe"
    )


# -- merging attempts ------------------------------------------------------


def test_a_test_that_failed_then_passed_is_flaky_and_counts_as_passed() -> None:
    root, report = report_of(
        item(
            "unit",
            attempt(1, "failed", junit(FAIL, OTHER)),
            attempt(2, "succeeded", junit(PASS, OTHER)),
        )
    )
    suite = suites(root)["unit"]
    test = cases(suite)["t"]
    assert tags(test) == ["flakyFailure"]
    assert first(test, "flakyFailure/stackTrace").text == "trace"
    assert first(test, "flakyFailure").attrib == {"message": "boom", "type": "failure"}
    assert set(cases(suite)) == {"t", "u"}  # the item's JUnit tells its story: no item case
    assert suite.attrib["hostname"] == "box-2"
    assert report.items[0].result == "flaky"
    assert report.totals.flaky == 1


def test_a_test_that_failed_every_time_has_its_failure_and_the_reruns() -> None:
    root, _ = report_of(
        item("unit", attempt(1, "failed", junit(FAIL)), attempt(2, "failed", junit(FAIL)))
    )
    test = cases(suites(root)["unit"])["t"]
    assert tags(test) == ["failure", "rerunFailure"]
    assert root.attrib["failures"] == "1"


def test_an_item_without_junit_is_one_test_case_with_its_exit_and_log() -> None:
    root, _ = report_of(
        item("build", attempt(1, "failed", exit_code=3)),
        item("lint", attempt(1, "succeeded")),
    )
    build = cases(suites(root)["build"])["build"]
    assert build.attrib["classname"] == "batchctl.nightly"
    failure = first(build, "failure")
    assert failure.attrib == {"message": "exit 3", "type": "failed"}
    assert "/state/runs/run-1/output.log" in (failure.text or "")
    assert "last words" in (failure.text or "")
    lint = cases(suites(root)["lint"])["lint"]
    assert list(lint) == []
    assert lint.attrib["time"] == "2.500"


def test_a_timeout_no_test_case_shows_is_the_items_own_error() -> None:
    root, _ = report_of(
        item("unit", attempt(1, "timeout"), attempt(2, "succeeded", junit(PASS))),
        item("post", attempt(1, "failed", junit(PASS), exit_code=2)),
    )
    unit = cases(suites(root)["unit"])
    # Passed on its retry after a timeout: the item's own case is flaky.
    assert tags(unit["unit"]) == ["flakyError"]
    assert first(unit["unit"], "flakyError").attrib["type"] == "timeout"
    assert list(unit["t"]) == []
    # Every test passed but the run exited 2: the report must not be greener than the batch.
    post = cases(suites(root)["post"])
    assert first(post["post"], "failure").attrib["message"] == "exit 2"


def test_skipped_and_unfinished_items() -> None:
    root, _ = report_of(
        item("deploy", error_code="dep_failed", blame="build#2"),
        item("gpu", error_code="no_matching_machine"),
        item("slow", attempt(1, "running", ended_at=None), final=False, outcome="running"),
        item(
            "next",
            attempt(1, "failed"),
            state="queued",
            final=False,
            outcome="queued",
            reason="retry backoff",
        ),
        done=False,
    )
    found = suites(root)
    deploy = first(cases(found["deploy"])["deploy"], "skipped")
    assert deploy.attrib["message"] == "dep_failed, because of build#2"
    assert "hostname" not in found["deploy"].attrib
    gpu = first(cases(found["gpu"])["gpu"], "skipped")
    assert gpu.attrib["message"] == "no_matching_machine: no machine of the fleet matches tag:linux"
    slow = cases(found["slow"])["slow"]
    assert tags(slow) == ["error"]
    assert first(slow, "error").attrib["type"] == "not_finished"
    following = cases(found["next"])["next"]
    assert tags(following) == ["rerunFailure", "error"]
    assert first(following, "error").attrib["message"] == "not finished: retry backoff"


def test_markdown_lists_what_did_not_simply_pass() -> None:
    report = build_report(
        batch_id="b1",
        source="plan:plans/nightly.yaml",
        staging="build-1",
        done=True,
        items=[
            item("ok", attempt(1, "succeeded")),
            item("bad", attempt(1, "failed", junit(FAIL), exit_code=1)),
            item(
                "retried",
                attempt(1, "error", error_code="ssh_connect", message="no route | lost"),
                attempt(2, "succeeded"),
            ),
            item("deploy", error_code="dep_failed", blame="bad#1"),
        ],
    )
    text = render_markdown(report)
    assert "4 items: 1 passed, 1 failed, 1 flaky, 1 skipped" in text
    assert "Tests: 4 — 1 failure, 0 errors, 1 skipped, 1 flaky" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == ["bad", "retried", "deploy"]
    assert (
        "| bad | failed | box-1 | 1 | exit 1; failing: m.t | `/state/runs/run-1/output.log` |"
        in rows
    )
    assert r"ssh_connect: no route \| lost" in rows[1]
    assert "| deploy | skipped |  | 0 | dep_failed, because of bad#1 |  |" in rows


def test_markdown_shows_what_tests_wrote_as_text_not_markup() -> None:
    report = build_report(
        batch_id="b1",
        source="plan:plans/nightly.yaml",
        staging="build-1",
        done=True,
        items=[
            item(
                "bad",
                attempt(
                    1, "error", error_code="ssh_connect", message="see [x](http://e) @team <b>`"
                ),
            ),
        ],
    )
    row = next(line for line in render_markdown(report).splitlines() if line.startswith("| bad"))
    assert r"see \[x\](http://e) \@team \<b\>\`" in row
