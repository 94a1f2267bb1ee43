"""The batch view (SPEC §8) built straight from stored records, as the plain
JSON-ready documents `status --json` prints.

The records are read as they are stored (dicts with defaults left out), not
validated into models: a view of a 100,000-item batch costs one pass over
its items and their latest runs, O(items + needs), with no per-field
validation. The typed views (``views``) are validated from these documents,
so there is one way a view is made. Standard library only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from batchctl.model import rules
from batchctl.model.ordering import DEFAULT_PRIORITY, Remaining

Document = dict[str, Any]
Stored = Mapping[str, Any]

# How many unmet needs a waiting item's reason names before "and N more".
WAITING_SHOWN = 10


class QueuedReasons(Protocol):
    """Why a ready, queued item has no machine yet: it needs the fleet and the
    clock, which a view of stored records alone does not have."""

    def queued_reason(self, selector: str, not_before: str | None) -> tuple[str, str]:
        """(reason_code, reason) of a ready item of ``selector``."""
        ...


def run_document(run: Stored, runs_prefix: str) -> Document:
    """A run as the view shows it. Where its log and artifacts are is left out
    of a stored run when it is the usual place in its run directory."""
    get = run.get
    run_id = run["id"]
    return {
        "id": run_id,
        "status": get("status", "pending"),
        "exit_code": get("exit_code"),
        "error_code": get("error_code"),
        "message": get("message"),
        "started_at": get("started_at"),
        "ended_at": get("ended_at"),
        "log_path": get("log_path") or f"{runs_prefix}/{run_id}/output.log",
        "artifacts_path": get("artifacts_path") or f"{runs_prefix}/{run_id}/artifacts",
    }


# Outcomes of items that still have something to do.
NOT_FINAL_OUTCOMES = ("running", "queued", "waiting")


def remaining_items(document: Document, now: datetime) -> Iterator[Remaining]:
    """The view's items not final yet, as ``ordering.time_left`` takes
    them: a running item with how long it has run. O(items)."""
    for item in document["items"]:
        if item["outcome"] not in NOT_FINAL_OUTCOMES:
            continue
        run = item.get("run")
        started = run.get("started_at") if run and item["outcome"] == "running" else None
        # A run not started yet (pending) is in flight all the same.
        running_for = 0.0 if item["outcome"] == "running" else None
        if started is not None:
            moment = started if isinstance(started, datetime) else datetime.fromisoformat(started)
            running_for = max(0.0, (now - moment).total_seconds())
        yield Remaining(item["name"], item.get("needs") or (), running_for)


def how_it_ended(run: Stored) -> str:
    """A run's end in a few words: ``exit 3``, ``timed out``, ``ssh_connect:
    …``, as CI log lines and reports say it."""
    status = run.get("status", "pending")
    if status == "timeout":
        return "timed out"
    if run.get("error_code"):
        return f"{run['error_code']}: {run.get('message') or ''}".rstrip(": ")
    if run.get("exit_code") not in (None, 0):
        return f"exit {run['exit_code']}"
    return str(status)


class BatchReading:
    """One stored batch joined with the stored runs: each item's outcome,
    finality and reason, and the whole view."""

    def __init__(
        self,
        batch: Stored,
        runs: Mapping[str, Stored],
        runs_prefix: str,
        reasons: QueuedReasons | None = None,
    ) -> None:
        self.batch = batch
        self.runs = runs
        self.runs_prefix = runs_prefix
        self.reasons = reasons
        self.items: Mapping[str, Stored] = batch["items"]
        self.entries: dict[str, Stored] = {entry["name"]: entry for entry in batch["entries"]}
        self.cancelled: bool = batch.get("cancelled", False)
        self._in_flight: int | None = None

    @staticmethod
    def attempt_run_ids(item: Stored) -> list[str]:
        """The runs of every attempt of an item, oldest first."""
        run_id = item.get("run_id")
        return [*item.get("history", ()), *([run_id] if run_id else [])]

    def run_of(self, item: Stored) -> Stored | None:
        run_id = item.get("run_id")
        return self.runs.get(run_id) if run_id else None

    def _status(self, item: Stored) -> str | None:
        run = self.run_of(item)
        return run.get("status", "pending") if run is not None else None

    def unmet_needs(self, entry: Stored) -> list[str]:
        """The needed items that have not passed yet, in the entry's order."""
        return [
            needed
            for needed in entry.get("needs", ())
            if not rules.passed(
                self.items[needed].get("state", rules.QUEUED), self._status(self.items[needed])
            )
        ]

    def outcome(self, entry: Stored, item: Stored) -> str:
        return self._outcome(entry, item.get("state", rules.QUEUED), self._status(item))

    def is_final(self, entry: Stored, item: Stored) -> bool:
        return self._final(entry, item, item.get("state", rules.QUEUED), self._status(item))

    def _outcome(self, entry: Stored, state: str, status: str | None) -> str:
        waiting = state == rules.QUEUED and bool(self.unmet_needs(entry))
        return rules.outcome(state, status, waiting=waiting)

    def _final(self, entry: Stored, item: Stored, state: str, status: str | None) -> bool:
        due = rules.retry_due(
            state, status, entry["retry_on"], item.get("attempt", 1), entry["retries"]
        )
        return rules.final(state, status, due_for_retry=due, cancelled=self.cancelled)

    def done(self) -> bool:
        """Every item final. O(items)."""
        return all(self.is_final(entry, self.items[name]) for name, entry in self.entries.items())

    def counts(self) -> dict[str, int]:
        """Items per outcome. O(items + needs)."""
        return dict(
            Counter(self.outcome(entry, self.items[name]) for name, entry in self.entries.items())
        )

    def reason(self, entry: Stored, item: Stored) -> str | None:
        """Why a queued item is not running yet, in words."""
        explained = self.explain(entry, item)
        return explained[1] if explained else None

    def explain(self, entry: Stored, item: Stored) -> tuple[str, str] | None:
        """(reason_code, reason): why an item is not running yet."""
        state = item.get("state", rules.QUEUED)
        run_id = item.get("run_id")
        if state == rules.DISPATCHED and run_id and run_id not in self.runs:
            return "run_missing", f"its run {run_id} is not in runs.json (removed by hand?)"
        if state != rules.QUEUED:
            return None
        waiting_on = self.unmet_needs(entry)
        if waiting_on:
            # The first few: a dependent of a matrix may wait on thousands.
            more = len(waiting_on) - WAITING_SHOWN
            return "needs", (
                "waiting on "
                + ", ".join(
                    f"{name} ({self.outcome(self.entries[name], self.items[name])})"
                    for name in waiting_on[:WAITING_SHOWN]
                )
                + (f" and {more} more" if more > 0 else "")
            )
        if self.reasons is None:
            return "ready", "ready; waiting for a matching machine"
        code, text = self.reasons.queued_reason(entry["selector"], item.get("not_before"))
        cap = self.batch.get("max_parallel")
        if code != "backoff" and cap is not None and self.in_flight() >= cap:
            return "cap", f"the batch runs at most {cap} at once (--max-parallel {cap})"
        return code, text

    def in_flight(self) -> int:
        """Runs of the batch not ended yet; O(items) once per reading."""
        if self._in_flight is None:
            self._in_flight = sum(
                1
                for item in self.items.values()
                if item.get("state") == rules.DISPATCHED
                and (run := self.run_of(item)) is not None
                and run.get("status", "pending") in ("pending", "running")
            )
        return self._in_flight

    def item_document(self, name: str) -> Document:
        return self._item_document(self.entries[name], self.items[name])[0]

    def _item_document(self, entry: Stored, item: Stored) -> tuple[Document, bool]:
        """An item's view and whether it is final: one look at its run.
        The per-item path of ``document``: O(needs), with the lookups a
        100,000-item view repeats kept to one each."""
        get = item.get
        state = get("state", rules.QUEUED)
        run_id = get("run_id")
        run = self.runs.get(run_id) if run_id else None
        status = run.get("status", "pending") if run is not None else None
        attempt = get("attempt", 1)
        needs = entry.get("needs")
        waiting = state == rules.QUEUED and bool(needs) and bool(self.unmet_needs(entry))
        explained = None if state == rules.SKIPPED or run is not None else self.explain(entry, item)
        document = {
            "name": item["name"],
            "selector": entry["selector"],
            # Stored lists are shown as they are: a view is read, not changed.
            "needs": needs or [],
            "state": state,
            "outcome": rules.outcome(state, status, waiting=waiting),
            "attempt": attempt,
            "run_id": run_id,
            "machine": get("machine"),
            "error_code": get("error_code"),
            "reason": explained[1] if explained else None,
            "reason_code": explained[0] if explained else None,
            "blame": get("blame"),
            "history": get("history") or [],
            "run": run_document(run, self.runs_prefix) if run is not None else None,
        }
        due = rules.retry_due(state, status, entry["retry_on"], attempt, entry["retries"])
        return document, rules.final(state, status, due_for_retry=due, cancelled=self.cancelled)

    def heading(self, done: bool | None = None) -> Document:
        """The batch's own fields, without its items; ``done`` if known."""
        batch = self.batch
        return {
            "id": batch["id"],
            "plan_hash": batch["plan_hash"],
            "staging": batch["staging"],
            "source": batch["source"],
            "created_by": batch["created_by"],
            "created_at": batch["created_at"],
            "expected_count": batch["expected_count"],
            "done": self.done() if done is None else done,
            "cancelled": self.cancelled,
            "queue_timeout_s": batch.get("queue_timeout_s", rules.DEFAULT_QUEUE_TIMEOUT_S),
            "max_parallel": batch.get("max_parallel"),
            "priority": batch.get("priority", DEFAULT_PRIORITY),
        }

    def summary(self) -> Document:
        """The batch's own fields and its counts, without the items."""
        return {**self.heading(), "counts": self.counts()}

    def document_in_chunks(self, size: int) -> tuple[Document, Iterator[list[Document]]]:
        """``document()`` without its items, and its items ``size`` at a time:
        the same view, never held whole (see ``envelope.ok_envelope_chunks``).
        One more pass over the items than ``document``: the heading's done and
        counts come before the items."""
        outcomes: Counter[str] = Counter()
        done = True
        for name, entry in self.entries.items():
            item = self.items[name]
            outcomes[self.outcome(entry, item)] += 1
            done = done and self.is_final(entry, item)

        def chunks() -> Iterator[list[Document]]:
            chunk: list[Document] = []
            for name, entry in self.entries.items():
                chunk.append(self._item_document(entry, self.items[name])[0])
                if len(chunk) == size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        return {**self.heading(done), "counts": dict(outcomes)}, chunks()

    def document(self) -> Document:
        """The whole view, in one pass: O(items + needs)."""
        items: list[Document] = []
        done = True
        stored_items = self.items
        for name, entry in self.entries.items():
            item, final = self._item_document(entry, stored_items[name])
            items.append(item)
            done = done and final
        return {
            **self.heading(done),
            "counts": dict(Counter(item["outcome"] for item in items)),
            "items": items,
        }
