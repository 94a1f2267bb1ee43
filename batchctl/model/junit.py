"""JUnit XML, both ways: reading the files tests wrote into their artifacts
(untrusted input), and writing the one file that reports a batch.

Reading refuses any document type declaration: the files come from the
tests, and a DTD is what internal entity expansion ("billion laughs") and
external entities need; no JUnit writer emits one. Only the fields a report
keeps are taken from a test case, never a subtree, so nothing in an input
file is copied into the report unchecked.

Writing follows the Maven Surefire report format (the flaky and rerun
elements Jenkins and GitLab read), in the element order its schema fixes.
Every text and attribute goes through ``xml_text``: XML 1.0 forbids most
control characters, which test output is full of.

Standard library only, and no I/O: the bytes are read and written elsewhere.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import NoReturn
from xml.parsers import expat

FAILURE = "failure"
ERROR = "error"
SKIPPED = "skipped"
PASSED = "passed"

# The Surefire names of an earlier attempt's failure or error: flaky when the
# test passed in the end, rerun when it did not.
RERUN_TAGS = {
    (True, FAILURE): "flakyFailure",
    (True, ERROR): "flakyError",
    (False, FAILURE): "rerunFailure",
    (False, ERROR): "rerunError",
}
_RERUN_ORDER_BEFORE_SKIPPED = ("rerunFailure", "flakyFailure")
_RERUN_ORDER_AFTER_ERROR = ("rerunError", "flakyError")


@dataclass(frozen=True)
class Problem:
    """A test case's failure, error or skip."""

    tag: str  # FAILURE, ERROR or SKIPPED
    message: str | None
    type: str | None
    text: str


@dataclass(frozen=True)
class Rerun:
    """An earlier run of a test case that did not pass (Surefire's
    flakyFailure, flakyError, rerunFailure, rerunError)."""

    tag: str
    message: str | None
    type: str
    stack_trace: str
    system_out: str | None = None
    system_err: str | None = None


@dataclass(frozen=True)
class Case:
    """One test case as the report shows it."""

    classname: str
    name: str
    time_ms: int
    problems: tuple[Problem, ...] = ()
    reruns: tuple[Rerun, ...] = ()
    system_out: str | None = None
    system_err: str | None = None

    @property
    def result(self) -> str:
        """What the case counts as: a failure outranks an error (a test that
        failed and then failed its teardown failed), which outranks a skip."""
        tags = {problem.tag for problem in self.problems}
        for tag in (FAILURE, ERROR, SKIPPED):
            if tag in tags:
                return tag
        return PASSED

    @property
    def flaky(self) -> bool:
        return self.result == PASSED and any(rerun.tag.startswith("flaky") for rerun in self.reruns)

    def as_reruns(self, *, flaky: bool) -> list[Rerun]:
        """This case's failures and errors as an earlier attempt of a test
        that ran again."""
        return [
            Rerun(
                tag=RERUN_TAGS[(flaky, problem.tag)],
                message=problem.message,
                type=problem.type or problem.tag,
                stack_trace=problem.text,
                system_out=self.system_out,
                system_err=self.system_err,
            )
            for problem in self.problems
            if problem.tag in (FAILURE, ERROR)
        ]


# -- text ------------------------------------------------------------------

# ANSI colour and cursor sequences: dropped whole, rather than leaving
# "[31m" behind once their escape character is gone.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# What XML 1.0 does not allow in a document, even as a character reference.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` as XML 1.0 can carry it: colour sequences dropped, other
    characters it forbids written out as ``\\xNN`` (``\\uNNNN``), visibly."""
    if text.isprintable():
        return text  # the common case, answered in C
    return _NOT_XML.sub(_escaped, _ANSI.sub("", text))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_seconds(milliseconds: int) -> str:
    """Seconds with three decimals, as the Surefire schema's time pattern
    wants them (no exponent, no more decimals)."""
    return f"{milliseconds // 1000}.{milliseconds % 1000:03d}"


def _milliseconds(value: str | None) -> int:
    """A time attribute in seconds; Surefire writes ``1,234.5``. Anything
    that is not a finite, non-negative number counts as 0."""
    if not value:
        return 0
    try:
        seconds = float(value.replace(",", ""))
    except ValueError:
        return 0
    if not 0 <= seconds < 1e12:  # also false for NaN
        return 0
    return round(seconds * 1000)


# -- reading ---------------------------------------------------------------


class Refused(ValueError):
    """A file that is not read as JUnit: malformed, or with a DTD."""


def _refuse(reason: str) -> NoReturn:
    raise Refused(reason)


def _parse_xml(data: bytes) -> ET.Element:
    """The document as elements, built by expat with every form of DTD
    refused before anything in it takes effect."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = lambda *_: _refuse(
        "has a document type declaration (DTDs and entities are refused)"
    )
    parser.EntityDeclHandler = lambda *_: _refuse("declares entities (refused)")
    parser.ExternalEntityRefHandler = lambda *_: _refuse("refers to external entities (refused)")
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise Refused(f"is not well-formed XML ({exc})") from None
    except RecursionError:
        raise Refused("is nested too deeply") from None
    return builder.close()


def _problem(element: ET.Element) -> Problem:
    return Problem(
        tag=element.tag,
        message=element.get("message"),
        type=element.get("type"),
        text="".join(element.itertext()),
    )


def _rerun(element: ET.Element) -> Rerun:
    def child(tag: str) -> str | None:
        found = element.find(tag)
        return "".join(found.itertext()) if found is not None else None

    # Surefire before 2.22.1 wrote the stack trace as the element's text.
    trace = child("stackTrace")
    return Rerun(
        tag=element.tag,
        message=element.get("message"),
        type=element.get("type") or element.tag,
        stack_trace=trace if trace is not None else (element.text or ""),
        system_out=child("system-out"),
        system_err=child("system-err"),
    )


def _joined_text(case: ET.Element, tag: str) -> str | None:
    parts = ["".join(found.itertext()) for found in case.findall(tag)]
    return "\n".join(parts) if parts else None


def _case(element: ET.Element, default_classname: str) -> Case:
    problems: list[Problem] = []
    reruns: list[Rerun] = []
    for child in element:
        if child.tag in (FAILURE, ERROR, SKIPPED):
            problems.append(_problem(child))
        elif child.tag in RERUN_TAGS.values():
            reruns.append(_rerun(child))
    return Case(
        classname=element.get("classname") or default_classname,
        name=element.get("name") or "(unnamed)",
        time_ms=_milliseconds(element.get("time")),
        problems=tuple(problems),
        reruns=tuple(reruns),
        system_out=_joined_text(element, "system-out"),
        system_err=_joined_text(element, "system-err"),
    )


def parse_junit(data: bytes) -> list[Case] | None:
    """The test cases of a JUnit XML document (a ``<testsuites>`` or
    ``<testsuite>`` root, suites nested at any depth); None for XML that is
    not JUnit. Raises ``Refused`` for a document that is not well-formed or
    has a DTD."""
    root = _parse_xml(data)
    if root.tag not in ("testsuites", "testsuite"):
        return None
    return [
        _case(case, suite.get("name") or "")
        for suite in root.iter("testsuite")
        for case in suite.findall("testcase")
    ]


# -- writing ---------------------------------------------------------------


def add_element(
    parent: ET.Element, tag: str, text: str | None = None, **attributes: str | None
) -> ET.Element:
    element = ET.SubElement(
        parent,
        tag,
        {name: xml_text(value) for name, value in attributes.items() if value is not None},
    )
    if text:
        element.text = xml_text(text)
    return element


def _write_rerun(parent: ET.Element, rerun: Rerun) -> None:
    element = add_element(parent, rerun.tag, message=rerun.message, type=rerun.type)
    add_element(element, "stackTrace", rerun.stack_trace)
    if rerun.system_out is not None:
        add_element(element, "system-out", rerun.system_out)
    if rerun.system_err is not None:
        add_element(element, "system-err", rerun.system_err)


def write_case(parent: ET.Element, case: Case) -> None:
    element = add_element(
        parent,
        "testcase",
        name=case.name,
        classname=case.classname,
        time=format_seconds(case.time_ms),
    )
    result = case.result
    by_tag = {tag: [p for p in case.problems if p.tag == tag] for tag in (FAILURE, ERROR, SKIPPED)}
    # The order the Surefire schema fixes: failure*, rerunFailure*,
    # flakyFailure*, skipped?, error?, rerunError*, flakyError*, system-out?,
    # system-err?. At most one error and one skip; a skip only when nothing
    # failed (a test is not both skipped and failed).
    for problem in by_tag[FAILURE]:
        add_element(
            element, FAILURE, problem.text, message=problem.message, type=problem.type or FAILURE
        )
    for tag in _RERUN_ORDER_BEFORE_SKIPPED:
        for rerun in case.reruns:
            if rerun.tag == tag:
                _write_rerun(element, rerun)
    if result == SKIPPED:
        skip = by_tag[SKIPPED][0]
        add_element(element, SKIPPED, skip.text, message=skip.message)
    if by_tag[ERROR]:
        error = by_tag[ERROR][0]
        add_element(element, ERROR, error.text, message=error.message, type=error.type or ERROR)
    for tag in _RERUN_ORDER_AFTER_ERROR:
        for rerun in case.reruns:
            if rerun.tag == tag:
                _write_rerun(element, rerun)
    if case.system_out is not None:
        add_element(element, "system-out", case.system_out)
    if case.system_err is not None:
        add_element(element, "system-err", case.system_err)
