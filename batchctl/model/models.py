"""The records batchctl keeps: resolved plan entries, batch items, batches, runs.

Models are frozen: a change is a new value, which keeps the per-item merge a
pure function of two versions.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from batchctl.model.ordering import DEFAULT_PRIORITY
from batchctl.model.rules import DEFAULT_QUEUE_TIMEOUT_S, TERMINAL_STATUSES


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ItemState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    SKIPPED = "skipped"


class SkipCode(StrEnum):
    NO_MATCHING_MACHINE = "no_matching_machine"
    ENTRYPOINT_MISSING = "entrypoint_missing"
    DIR_MISSING = "dir_missing"
    DEP_FAILED = "dep_failed"
    CANCELLED = "cancelled"
    QUEUE_TIMEOUT = "queue_timeout"


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class Entry(Record):
    """One plan entry with every default resolved; what a batch stores and hashes."""

    name: str
    dir: str
    abs_dir: str
    selector: str
    needs: tuple[str, ...] = ()
    timeout_s: int
    retries: int
    retry_on: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)
    # Names of controller variables the run receives (their values are not
    # part of the plan: they change from one pipeline to the next).
    env_pass: tuple[str, ...] = ()
    # Needed entries whose artifacts the run receives in $BATCHCTL_INPUTS_DIR.
    inputs: tuple[str, ...] = ()
    # The digest of the directory's snapshot (state/snapshots.py), taken by
    # `run`: what the batch runs. None in batches made before snapshots.
    # Not in the plan hash: it is the batch key's content part.
    snapshot: str | None = None

    def hashed_fields(self) -> dict[str, object]:
        """The behaviour-changing fields. ``abs_dir`` is left out: moving the
        checkout must not make a new batch, only editing the plan should."""
        fields: dict[str, object] = {
            "name": self.name,
            "dir": self.dir,
            "selector": self.selector,
            "needs": sorted(self.needs),
            "timeout": self.timeout_s,
            "retries": self.retries,
            "retry_on": sorted(self.retry_on),
            "env": dict(sorted(self.env.items())),
        }
        # Only when used, so plans without them keep the hash (and the
        # batches) they had.
        if self.env_pass:
            fields["env_pass"] = sorted(self.env_pass)
        if self.inputs:
            fields["inputs"] = sorted(self.inputs)
        return fields


class Item(Record):
    """A dispatch decision about one entry; outcomes live in the runs store."""

    name: str
    state: ItemState = ItemState.QUEUED
    attempt: int = 1
    run_id: str | None = None
    machine: str | None = None
    error_code: SkipCode | None = None
    blame: str | None = None
    history: tuple[str, ...] = ()
    not_before: datetime | None = None
    updated_at: datetime | None = None

    def skipped(self, code: SkipCode, now: datetime, blame: str | None = None) -> Item:
        """This attempt will not run."""
        return self.model_copy(
            update={
                "state": ItemState.SKIPPED,
                "error_code": code,
                "blame": blame,
                "updated_at": now,
            }
        )

    def next_attempt(self, now: datetime, not_before: datetime | None = None) -> Item:
        """Queued again as a new attempt; the current run joins the history."""
        return Item(
            name=self.name,
            attempt=self.attempt + 1,
            history=(*self.history, self.run_id) if self.run_id else self.history,
            not_before=not_before,
            updated_at=now,
        )


class ProcessIdentity(Record):
    """A process, named so that a recycled pid, another pid namespace or
    another boot (or host) is never taken for it: the kernel's boot id, the
    pid namespace, the pid, and the process's start time in clock ticks."""

    boot_id: str
    pid_ns: str
    pid: int
    start_ticks: int


class Lease(Record):
    """A worker's claim on a batch. ``fleet`` is the fleet file it serves, so a
    takeover keeps dispatching to the same machines. ``beat`` counts renewals:
    another host judges the holder alive while it sees the count move on its
    own monotonic clock, never by comparing wall clocks (``heartbeat_at`` is
    for people reading the file)."""

    token: str
    pid: int
    host: str
    heartbeat_at: datetime
    fleet: str | None = None
    holder: ProcessIdentity | None = None
    beat: int = 0


class Batch(Record):
    id: str
    plan_hash: str
    staging: str
    # The digest of every entry's snapshot (with plan_hash and staging, the
    # batch's key): an edited test makes a new batch. None before snapshots.
    content_hash: str | None = None
    created_by: str
    created_at: datetime
    expected_count: int
    source: str
    entries: tuple[Entry, ...]
    items: dict[str, Item]
    cancelled: bool = False
    # Set by the worker that saw every item final; ``retry`` clears it.
    finished: bool = False
    lease: Lease | None = None
    # Ready items per selector that found no free machine at the last step:
    # other batches' dispatches hold slots back for them by fair share.
    demand: dict[str, int] = Field(default_factory=dict)
    # Items ready this long without a machine taking them are skipped.
    queue_timeout_s: int = DEFAULT_QUEUE_TIMEOUT_S
    # At most this many runs of the batch at once (``run --max-parallel``).
    max_parallel: int | None = None
    # Its weight in the fair share of the fleet (``run --priority``).
    priority: int = DEFAULT_PRIORITY


class Run(Record):
    id: str
    batch_id: str
    item: str
    attempt: int
    machine: str
    test_dir: str
    test_dir_hash: str
    status: RunStatus = RunStatus.PENDING
    exit_code: int | None = None
    error_code: str | None = None
    message: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    log_path: str
    artifacts_path: str
    # Who executes the run: its supervising process, and the test's process
    # group. Liveness is judged from these and from the heartbeat file in the
    # run's directory, never written here.
    supervisor: ProcessIdentity | None = None
    pgid: int | None = None

    @property
    def claimed(self) -> bool:
        """Someone took it on: claiming is the move from pending to running."""
        return self.status is not RunStatus.PENDING
