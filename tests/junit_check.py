"""Checks a JUnit report the way CI tools read it: against the schemas they
validate with, and for totals that add up at every level."""

from __future__ import annotations

import copy
import functools
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import xmlschema

SCHEMAS = Path(__file__).parent / "schemas"


@functools.cache
def _schema(name: str) -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMAS / name))


def validate(document: bytes) -> ET.Element:
    """The report, parsed, once it is valid for both schemas.

    The Jenkins xUnit plugin's junit-10.xsd takes the whole document (its
    ``<testsuites>`` root, ``hostname``, and Surefire's flaky and rerun
    elements). Surefire's own 3.0 schema describes one ``<testsuite>``, and
    is stricter (element order, a ``type`` on every failure and error,
    times with at most three decimals): every suite is checked against it,
    without the ``hostname`` attribute that schema does not declare."""
    _schema("junit-10.xsd").validate(document.decode())
    # The report batchctl just wrote, not a file from a test: trusted input.
    root = ET.fromstring(document)  # noqa: S314
    for suite in root.findall("testsuite"):
        alone = copy.deepcopy(suite)
        alone.attrib.pop("hostname", None)
        _schema("surefire-test-report-3.0.xsd").validate(ET.tostring(alone, encoding="unicode"))
    return root


def _result(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def check_totals(root: ET.Element) -> None:
    """Every suite's counts are its test cases'; the root's are the sums of
    its suites', and so is its time."""
    sums = {"tests": 0, "failures": 0, "errors": 0}
    time = Decimal(0)
    for suite in root.findall("testsuite"):
        results = [_result(case) for case in suite.findall("testcase")]
        counted = {
            "tests": len(results),
            "failures": results.count("failure"),
            "errors": results.count("error"),
            "skipped": results.count("skipped"),
        }
        stated = {name: int(suite.attrib[name]) for name in counted}
        assert stated == counted, f"suite {suite.get('name')}: {stated} != {counted}"
        for name in sums:
            sums[name] += counted[name]
        time += Decimal(suite.attrib["time"])
    assert {name: int(root.attrib[name]) for name in sums} == sums
    assert Decimal(root.attrib["time"]) == time


def suites(root: ET.Element) -> dict[str, ET.Element]:
    return {suite.attrib["name"]: suite for suite in root.findall("testsuite")}


def cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {case.attrib["name"]: case for case in suite.findall("testcase")}
