"""What a CI log shows while a batch runs: one timestamped line per item
event (started, passed, failed, skipped), and at the end each failed item's
last log lines. Plain text, for output that is not a terminal; under GitHub
Actions (``GITHUB_ACTIONS=true``) also error annotations and a markdown
summary appended to ``$GITHUB_STEP_SUMMARY``.

Events are read off the stored records between two looks at the batch, so
a run that started and ended between two looks still gets both lines, with
the times its record carries. Standard library only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from batchctl.model import rules
from batchctl.model.viewdoc import BatchReading, how_it_ended

TAIL_LINES = 30

_FAILED_OUTCOMES = ("failed", "error", "timeout", "interrupted")


def _clock(moment: str | None) -> str:
    """``HH:MM:SS`` of a stored UTC time (``2026-11-22T05:00:03.12Z``)."""
    return moment[11:19] if moment and len(moment) >= 19 else "--:--:--"


def _seconds(run: Mapping[str, Any]) -> str:
    started, ended = run.get("started_at"), run.get("ended_at")
    if not started or not ended:
        return ""
    took = datetime.fromisoformat(ended) - datetime.fromisoformat(started)
    return f" ({took.total_seconds():.1f}s)"


class ItemEvents:
    """Each look at the batch yields the lines of what happened since the
    last one, every attempt included (an attempt that failed and was queued
    again between two looks is in the item's history). O(items) a look,
    like the look itself, plus the attempts of the items that changed."""

    def __init__(self) -> None:
        # Per item: (attempt, state, run status) as last seen.
        self._seen: dict[str, tuple[int, str, str | None]] = {}
        # Per item: the last attempt whose start, and whose end, were shown
        # (attempts follow one another); the items whose skip was.
        self._started: dict[str, int] = {}
        self._ended: dict[str, int] = {}
        self._skipped: set[str] = set()

    def lines(self, reading: BatchReading) -> list[str]:
        timed: list[tuple[str, int, str]] = []

        def say(moment: str | None, line: str) -> None:
            timed.append((moment or "", len(timed), line))

        for name, entry in reading.entries.items():
            item = reading.items[name]
            state = item.get("state", rules.QUEUED)
            run = reading.run_of(item)
            now = (item.get("attempt", 1), state, run.get("status") if run else None)
            if self._seen.get(name) == now:
                continue
            self._seen[name] = now
            for run_id in reading.attempt_run_ids(item):
                attempt_run = reading.runs.get(run_id)
                if attempt_run is not None:
                    self._attempt(name, entry, item, attempt_run, say)
            if state == rules.SKIPPED and name not in self._skipped:
                self._skipped.add(name)
                why = item.get("error_code") or "skipped"
                if item.get("blame"):
                    why += f", because of {item['blame']}"
                say(item.get("updated_at"), f"skip {name} ({why})")
        timed.sort()
        return [f"{_clock(moment)} {line}" for moment, _, line in timed]

    def _attempt(
        self,
        name: str,
        entry: Mapping[str, Any],
        item: Mapping[str, Any],
        run: Mapping[str, Any],
        say: Callable[[str | None, str], None],
    ) -> None:
        attempt = run.get("attempt", 1)
        status = run.get("status", "pending")
        label = f"{name}#{attempt} on {run.get('machine', '?')}"
        if attempt > self._started.get(name, 0):
            self._started[name] = attempt
            say(run.get("started_at") or run.get("created_at"), f"start {label}")
        if status not in rules.TERMINAL_STATUSES or attempt <= self._ended.get(name, 0):
            return
        self._ended[name] = attempt
        took = _seconds(run)
        if status == rules.SUCCEEDED:
            say(run.get("ended_at"), f"pass {label}{took}")
            return
        line = f"FAIL {label} {how_it_ended(run)}{took}"
        later = attempt < item.get("attempt", 1)
        if later or rules.retry_due(
            rules.DISPATCHED, status, entry["retry_on"], attempt, entry["retries"]
        ):
            line += f"; retrying (attempt {attempt + 1} of {entry['retries'] + 1})"
        say(run.get("ended_at"), line)


def failed_items(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The items of a view that did not pass and ran (a skipped item has
    no log; its event line said why)."""
    return [
        item
        for item in document["items"]
        if item["outcome"] in _FAILED_OUTCOMES and item.get("run") is not None
    ]


def log_tail(path: str, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log, read from its end."""
    try:
        with Path(path).open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return [f"(cannot read {path}: {exc.strerror})"]
    return list(deque(text.splitlines(), maxlen=lines))


def failure_report(document: Mapping[str, Any]) -> list[str]:
    """Each failed item's end, where its log and artifacts are, and its
    log's last lines: what a CI log needs to show at the end."""
    report: list[str] = []
    for item in failed_items(document):
        run = item["run"]
        report.append(
            f"--- {item['name']}#{item['attempt']} on {item['machine']}: "
            f"{item['outcome']} ({how_it_ended(run)})"
        )
        report.append(f"    log:       {run['log_path']}")
        report.append(f"    artifacts: {run['artifacts_path']}")
        report.extend(f"    | {line}" for line in log_tail(run["log_path"]))
    return report


def _workflow_data(text: str) -> str:
    """``text`` escaped as the message of a workflow command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _workflow_property(text: str) -> str:
    """``text`` escaped as a property of a workflow command: an item of a
    matrix, ``test[py=3.11,shard=1]``, has a comma, which separates properties."""
    return _workflow_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(document: Mapping[str, Any]) -> list[str]:
    """``::error::`` lines GitHub Actions shows on the run's page."""
    return [
        f"::error title={_workflow_property(item['name'] + ' ' + item['outcome'])}::"
        + _workflow_data(
            f"{item['name']}#{item['attempt']} on {item['machine']}: {how_it_ended(item['run'])}"
        )
        for item in failed_items(document)
    ]


def github_summary(document: Mapping[str, Any]) -> str:
    """The batch as markdown for ``$GITHUB_STEP_SUMMARY``."""
    counts = ", ".join(f"{count} {outcome}" for outcome, count in document["counts"].items())
    lines = [
        f"### batchctl batch `{document['id']}`",
        "",
        f"{document['source']}, staging `{document['staging'] or '-'}`: {counts}",
        "",
    ]
    failed = failed_items(document)
    if failed:
        lines += [
            "| item | attempt | machine | outcome | how | log |",
            "|---|---:|---|---|---|---|",
        ]
        lines += [
            f"| {item['name']} | {item['attempt']} | {item['machine']} | {item['outcome']} "
            f"| {how_it_ended(item['run'])} | `{item['run']['log_path']}` |"
            for item in failed
        ]
        lines.append("")
    return "\n".join(lines) + "\n"
