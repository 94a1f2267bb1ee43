"""A batch's report (``batchctl report``): every item's attempts merged into
the test cases CI tools show, with the counts at every level, and the same
summary as markdown.

Per item, the test cases are those its runs wrote as JUnit into their
artifacts, merged across attempts: a test's result is the one of the latest
attempt that ran it, and its failures in earlier attempts are kept as
Surefire's ``flakyFailure``/``flakyError`` (it passed in the end) or
``rerunFailure``/``rerunError`` (it did not). The item itself becomes a test
case when its JUnit cannot tell its story: it wrote none, it was skipped or
is not finished, or one of its attempts ended badly in a way no test case
shows (a timeout, an infrastructure error, a non-zero exit with every test
passing). So a report is never greener than the batch, and an item that
passed on a retry is visibly flaky.

Standard library only, and no I/O: ``engine.report`` reads the files.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import PurePosixPath

from batchctl.model import rules
from batchctl.model.junit import (
    ERROR,
    FAILURE,
    PASSED,
    RERUN_TAGS,
    SKIPPED,
    Case,
    Problem,
    Rerun,
    add_element,
    format_seconds,
    write_case,
    xml_text,
)
from batchctl.model.viewdoc import how_it_ended

# Item results, as the report names them: the view's outcomes, with
# ``flaky`` for an item that passed after failing, and ``not_finished`` for
# one that was still queued or running.
FLAKY = "flaky"
NOT_FINISHED = "not_finished"
NOT_FINISHED_TYPE = "not_finished"

SKIP_REASONS = {
    "dep_failed": "a needed item did not pass",
    "no_matching_machine": "no machine of the fleet matches {selector}",
    "entrypoint_missing": "its directory has no entrypoint for the machines matching {selector}",
    "dir_missing": "its directory is missing",
    "cancelled": "the batch was cancelled",
    "queue_timeout": "no machine matching {selector} took it within the queue timeout",
}

# How many test names a reason lists before saying how many more there are.
NAMES_SHOWN = 5


@dataclass(frozen=True)
class AttemptInput:
    """One attempt of an item: its run as stored, what it wrote as JUnit
    (None: no JUnit file), and its log's last lines if it did not pass."""

    attempt: int
    run_id: str
    machine: str | None
    status: str
    exit_code: int | None = None
    error_code: str | None = None
    message: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    log_path: str | None = None
    artifacts_path: str | None = None
    log_tail: str | None = None
    cases: tuple[Case, ...] | None = None
    junit_files: tuple[str, ...] = ()

    @property
    def how(self) -> str:
        return how_it_ended(
            {
                "status": self.status,
                "exit_code": self.exit_code,
                "error_code": self.error_code,
                "message": self.message,
            }
        )

    @property
    def duration_ms(self) -> int:
        if not self.started_at or not self.ended_at:
            return 0
        took = datetime.fromisoformat(self.ended_at) - datetime.fromisoformat(self.started_at)
        return max(0, round(took.total_seconds() * 1000))

    @property
    def explained_by_its_tests(self) -> bool:
        """It exited non-zero and its JUnit says which test failed."""
        return (
            self.status == "failed"
            and self.cases is not None
            and any(case.result in (FAILURE, ERROR) for case in self.cases)
        )


@dataclass(frozen=True)
class ItemInput:
    """One item of the batch view, with every attempt."""

    name: str
    selector: str
    state: str
    outcome: str
    final: bool
    error_code: str | None = None
    blame: str | None = None
    reason: str | None = None
    attempts: tuple[AttemptInput, ...] = ()
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Counts:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    flaky: int = 0
    time_ms: int = 0

    @classmethod
    def of(cls, cases: Iterable[Case], time_ms: int) -> Counts:
        results: Counter[str] = Counter()
        flaky = 0
        for case in cases:
            results[case.result] += 1
            flaky += case.flaky
        return cls(
            tests=results.total(),
            failures=results[FAILURE],
            errors=results[ERROR],
            skipped=results[SKIPPED],
            flaky=flaky,
            time_ms=time_ms,
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            tests=self.tests + other.tests,
            failures=self.failures + other.failures,
            errors=self.errors + other.errors,
            skipped=self.skipped + other.skipped,
            flaky=self.flaky + other.flaky,
            time_ms=self.time_ms + other.time_ms,
        )

    def document(self) -> dict[str, int | float]:
        return {
            "tests": self.tests,
            "failures": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
            "flaky": self.flaky,
            "time_s": self.time_ms / 1000,
        }


@dataclass(frozen=True)
class ItemReport:
    name: str
    result: str
    machine: str | None
    attempts: int
    reason: str
    log_path: str | None
    cases: tuple[Case, ...]
    counts: Counts
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Report:
    batch_id: str
    source: str
    staging: str
    done: bool
    items: tuple[ItemReport, ...]
    warnings: tuple[str, ...] = ()
    # What the items were built from, in the same order: the HTML report
    # draws every attempt's times and the needs between items.
    inputs: tuple[ItemInput, ...] = field(default=(), compare=False, repr=False)
    totals: Counts = field(init=False)

    def __post_init__(self) -> None:
        total = Counts()
        for item in self.items:
            total += item.counts
        object.__setattr__(self, "totals", total)

    def item_results(self) -> dict[str, int]:
        """Items per result, in the order results are first met."""
        return dict(Counter(item.result for item in self.items))


def report_classname(source: str) -> str:
    """The class name of the test cases that stand for items: ``batchctl.``
    and the plan's file name without its suffix (``batchctl.inline`` for a
    plan read from stdin), so CI tools group them under batchctl, by plan.
    Dots in the name would split it into more packages."""
    if source.startswith("plan:"):
        stem = PurePosixPath(source.removeprefix("plan:")).stem or "plan"
    else:
        stem = source or "inline"
    return "batchctl." + stem.replace(".", "_")


def skip_message(code: str | None, blame: str | None, selector: str) -> str:
    """``dep_failed, because of build#1``; ``no_matching_machine: no machine
    of the fleet matches tag:gpu``."""
    if code == "dep_failed" and blame:
        return f"dep_failed, because of {blame}"
    if code is None:
        return "skipped"
    why = SKIP_REASONS.get(code)
    return f"{code}: {why.format(selector=selector)}" if why else code


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def _merged_cases(attempts: Sequence[AttemptInput]) -> list[Case]:
    """Every test case any attempt reported, each with the result of the
    latest attempt that ran it and the failures of the earlier ones as
    flaky or rerun entries. Cases are told apart by class name, name and
    which of that name's occurrences in one attempt they are, and listed in
    the order they were first seen."""
    history: dict[tuple[str, str, int], list[Case]] = {}
    for attempt in attempts:
        seen: Counter[tuple[str, str]] = Counter()
        for case in attempt.cases or ():
            key = (case.classname, case.name)
            history.setdefault((*key, seen[key]), []).append(case)
            seen[key] += 1
    merged = []
    for appearances in history.values():
        last = appearances[-1]
        flaky = last.result == PASSED
        earlier = [rerun for case in appearances[:-1] for rerun in case.as_reruns(flaky=flaky)]
        merged.append(replace(last, reruns=(*earlier, *last.reruns)))
    return merged


def _attempt_problem(name: str, attempt: AttemptInput) -> Problem | None:
    """How an attempt's run ended, as a failure or an error of the item's own
    test case; None if it passed, or if its JUnit shows the failure."""
    if attempt.status == rules.SUCCEEDED or attempt.explained_by_its_tests:
        return None
    finished = attempt.status in rules.TERMINAL_STATUSES
    lines = [
        f"{name}#{attempt.attempt} on {attempt.machine or '?'}: "
        + (f"{attempt.status} ({attempt.how})" if finished else f"not finished ({attempt.status})"),
        f"run:       {attempt.run_id}",
    ]
    if attempt.log_path:
        lines.append(f"log:       {attempt.log_path}")
    if attempt.artifacts_path:
        lines.append(f"artifacts: {attempt.artifacts_path}")
    if attempt.log_tail is not None:
        lines += ["", "last lines of its output:", attempt.log_tail.rstrip("\n")]
    text = "\n".join(lines) + "\n"
    if not finished:
        return Problem(ERROR, f"not finished: its run is {attempt.status}", NOT_FINISHED_TYPE, text)
    tag = FAILURE if attempt.status == "failed" else ERROR
    return Problem(tag, attempt.how, attempt.error_code or attempt.status, text)


def _as_rerun(problem: Problem, *, flaky: bool) -> Rerun:
    return Rerun(
        tag=RERUN_TAGS[(flaky, problem.tag)],
        message=problem.message,
        type=problem.type or problem.tag,
        stack_trace=problem.text,
    )


def _item_case(item: ItemInput, classname: str) -> Case:
    """The test case that stands for the item itself."""
    problems = [(attempt, _attempt_problem(item.name, attempt)) for attempt in item.attempts]
    ended = [
        problem
        for attempt, problem in problems
        if problem is not None and attempt.status in rules.TERMINAL_STATUSES
    ]
    last: Problem | None
    if item.state == rules.SKIPPED:
        message = skip_message(item.error_code, item.blame, item.selector)
        last = Problem(SKIPPED, message, None, f"{item.name} did not run: {message}\n")
        earlier = ended
    elif not item.final:
        waits = item.reason or item.outcome
        last = Problem(
            ERROR,
            f"not finished: {waits}",
            NOT_FINISHED_TYPE,
            f"{item.name} was not finished when the report was written: {waits}\n",
        )
        earlier = ended
    elif problems:
        last = problems[-1][1]
        earlier = [problem for _, problem in problems[:-1] if problem is not None]
    else:
        # Final and not skipped means dispatched: its run is listed, even
        # when its record is gone (then it is interrupted). Kept for safety.
        last = Problem(ERROR, "no run recorded", "error", f"{item.name} has no run\n")
        earlier = []
    flaky = last is None
    return Case(
        classname=classname,
        name=item.name,
        time_ms=item.attempts[-1].duration_ms if item.attempts else 0,
        problems=(last,) if last is not None else (),
        reruns=tuple(_as_rerun(problem, flaky=flaky) for problem in earlier),
    )


def _needs_item_case(item: ItemInput) -> bool:
    if item.state == rules.SKIPPED or not item.final:
        return True
    if all(attempt.cases is None for attempt in item.attempts):
        return True
    return any(_attempt_problem(item.name, attempt) is not None for attempt in item.attempts)


def _result(item: ItemInput, cases: Sequence[Case]) -> str:
    if item.state == rules.SKIPPED:
        return SKIPPED
    if not item.final:
        return NOT_FINISHED
    if item.outcome == PASSED and (len(item.attempts) > 1 or any(case.flaky for case in cases)):
        return FLAKY
    return item.outcome


def _reason(item: ItemInput, result: str, cases: Sequence[Case]) -> str:
    """Why the item is shown: how it ended, and which of its tests (``cases``:
    those its JUnit reported) failed or were flaky."""
    if result == SKIPPED:
        return skip_message(item.error_code, item.blame, item.selector)
    if result == NOT_FINISHED:
        return item.reason or item.outcome
    parts = []
    if result == FLAKY:
        earlier = item.attempts[:-1]
        if earlier:
            parts.append(
                f"passed on attempt {item.attempts[-1].attempt} after "
                + "; ".join(f"#{attempt.attempt} {attempt.how}" for attempt in earlier)
            )
        flaky = [f"{case.classname}.{case.name}" for case in cases if case.flaky]
        if flaky:
            parts.append("flaky tests: " + _names(flaky))
    elif result != PASSED and item.attempts:
        parts.append(item.attempts[-1].how)
    failing = [f"{case.classname}.{case.name}" for case in cases if case.result in (FAILURE, ERROR)]
    if failing and result != PASSED:
        parts.append("failing: " + _names(failing))
    return "; ".join(parts)


def item_report(item: ItemInput, *, batch_id: str, staging: str, classname: str) -> ItemReport:
    merged = _merged_cases(item.attempts)
    cases = (_item_case(item, classname), *merged) if _needs_item_case(item) else tuple(merged)
    result = _result(item, cases)
    last = item.attempts[-1] if item.attempts else None
    machine = last.machine if last is not None else None
    properties = [
        ("batchctl.batch", batch_id),
        ("batchctl.staging", staging),
        ("batchctl.item", item.name),
        ("batchctl.selector", item.selector),
        ("batchctl.result", result),
        ("batchctl.attempts", str(len(item.attempts))),
    ]
    if item.attempts:
        properties.append(
            ("batchctl.machines", ", ".join(attempt.machine or "?" for attempt in item.attempts))
        )
        properties.append(("batchctl.runs", ", ".join(a.run_id for a in item.attempts)))
    junit_files = [path for attempt in item.attempts for path in attempt.junit_files]
    if junit_files:
        properties.append(("batchctl.junit_files", ", ".join(junit_files)))
    if last is not None and last.log_path:
        properties.append(("batchctl.log", last.log_path))
    if last is not None and last.artifacts_path:
        properties.append(("batchctl.artifacts", last.artifacts_path))
    if item.state == rules.SKIPPED:
        properties.append(("batchctl.skip_code", item.error_code or "skipped"))
        if item.blame:
            properties.append(("batchctl.blame", item.blame))
    return ItemReport(
        name=item.name,
        result=result,
        machine=machine,
        attempts=len(item.attempts),
        reason=_reason(item, result, merged),
        log_path=last.log_path if last is not None else None,
        cases=cases,
        counts=Counts.of(cases, sum(attempt.duration_ms for attempt in item.attempts)),
        properties=tuple(properties),
    )


def build_report(
    *,
    batch_id: str,
    source: str,
    staging: str,
    done: bool,
    items: Iterable[ItemInput],
    warnings: Sequence[str] = (),
) -> Report:
    classname = report_classname(source)
    inputs = tuple(items)
    return Report(
        batch_id=batch_id,
        source=source,
        staging=staging,
        done=done,
        items=tuple(
            item_report(item, batch_id=batch_id, staging=staging, classname=classname)
            for item in inputs
        ),
        warnings=tuple(warnings),
        inputs=inputs,
    )


# -- markdown --------------------------------------------------------------


# Characters markdown (and the HTML it may hold) would read as links,
# mentions, code, emphasis or tags: test names and messages come from files
# the tests wrote, and a CI summary must show them as they are. (`_` inside a
# word and `#` inside a cell are plain text in GitHub's and GitLab's markdown.)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]|<>&@])")


def _cell(text: str | None) -> str:
    """Text that stays in its table cell, shown as it is."""
    if not text:
        return ""
    flat = " ".join(xml_text(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def _code(text: str | None) -> str:
    # A backtick would end the code span early.
    return "`" + _cell(text).replace("`", "'") + "`" if text else ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def render_markdown(report: Report) -> str:
    """The report as markdown: a counts line, then a table of the items that
    did not simply pass (failed, flaky, skipped, not finished)."""
    totals = report.totals
    results = ", ".join(f"{count} {result}" for result, count in report.item_results().items())
    lines = [
        f"### batchctl report: batch `{report.batch_id}`",
        "",
        f"{_cell(report.source)}, staging `{_cell(report.staging) or '-'}`: "
        f"{_plural(len(report.items), 'item')}: {results or 'none'}"
        + ("" if report.done else " (the batch is not finished)"),
        "",
        f"Tests: {totals.tests} — {_plural(totals.failures, 'failure')}, "
        f"{_plural(totals.errors, 'error')}, {totals.skipped} skipped, {totals.flaky} flaky, "
        f"in {format_seconds(totals.time_ms)}s",
        "",
    ]
    shown = [item for item in report.items if item.result != PASSED]
    if not shown:
        lines += ["Every item passed.", ""]
        return "\n".join(lines)
    lines += [
        "| item | result | machine | attempts | reason | log |",
        "|---|---|---|---:|---|---|",
    ]
    lines += [
        f"| {_cell(item.name)} | {item.result} | {_cell(item.machine)} | {item.attempts} "
        f"| {_cell(item.reason)} | {_code(item.log_path)} |"
        for item in shown
    ]
    lines.append("")
    return "\n".join(lines)


def render_junit(report: Report) -> bytes:
    """The batch as one JUnit XML document: a ``<testsuites>`` root with a
    ``<testsuite>`` per item, UTF-8, with its XML declaration."""
    totals = report.totals
    root = ET.Element(
        "testsuites",
        {
            "name": xml_text(f"batchctl batch {report.batch_id}"),
            "tests": str(totals.tests),
            "failures": str(totals.failures),
            "errors": str(totals.errors),
            "time": format_seconds(totals.time_ms),
        },
    )
    for item in report.items:
        counts = item.counts
        suite = add_element(
            root,
            "testsuite",
            name=item.name,
            tests=str(counts.tests),
            failures=str(counts.failures),
            errors=str(counts.errors),
            skipped=str(counts.skipped),
            time=format_seconds(counts.time_ms),
            hostname=item.machine,
        )
        properties = add_element(suite, "properties")
        for name, value in item.properties:
            add_element(properties, "property", name=name, value=value)
        for case in item.cases:
            write_case(suite, case)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"
