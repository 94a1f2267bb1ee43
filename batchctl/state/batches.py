"""batches.json: dispatch decisions only (SPEC §3, §5), as snapshot + journal.

Journal records, each folded by ``fold_batches`` (a pure function of the
document and the record):

- ``{"op": "create", "batch": {...}}`` a new batch, whole;
- ``{"op": "items", "batch": ID, "items": {NAME: item}}`` item versions,
  merged per item, monotonically (``merge.merge_raw_item``);
- ``{"op": "cancel", "batch": ID}`` / ``{"op": "uncancel", "batch": ID}``;
- ``{"op": "lease", "batch": ID, "lease": {...} | null}``;
- ``{"op": "demand", "batch": ID, "demand": {SELECTOR: COUNT}}`` ready items
  that found no machine (other batches hold slots back for them: fair share);
- ``{"op": "remove", "batches": [ID, ...]}`` (prune, followed by a compaction).

Every decision that depends on the stored state (is this key taken, is this
lease still ours, which items may be retried) is taken under the lock on the
freshly folded document, so a writer holding an old read cannot undo what
another writer did since.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import EllipsisType
from typing import Any, NamedTuple

from pydantic import TypeAdapter

from batchctl.model.errors import LeaseLost
from batchctl.model.models import Batch, Item, Lease
from batchctl.model.ordering import DEFAULT_PRIORITY
from batchctl.state import final_views
from batchctl.state.folds import batches_file, resolve_id
from batchctl.state.journal import (
    COMPACT_MIN_BYTES,
    DEFAULT_LOCK_TIMEOUT_S,
    Record,
    Subscription,
)
from batchctl.state.memory import share_fields_set, without_gc

# Parses a stored time as the model would, without validating the whole batch.
_CREATED_AT = TypeAdapter(datetime)


class BatchDemand(NamedTuple):
    """A batch's ready items that found no machine at its last step, per
    selector, with what the fair share weighs."""

    batch_id: str
    lease: Lease | None
    cancelled: bool
    demand: dict[str, int]
    priority: int


def items_record(batch_id: str, items: Mapping[str, Item]) -> Record:
    return {
        "op": "items",
        "batch": batch_id,
        # Defaults left out keep a record near the size of the decision.
        "items": {
            name: item.model_dump(mode="json", exclude_defaults=True)
            for name, item in items.items()
        },
    }


class BatchStore:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        compact_min_bytes: int | None = None,
        share_values: bool = False,
    ) -> None:
        """``share_values``: for a process that keeps the state for long (a
        worker), share repeated strings; a one-shot read skips the cost."""
        self.state_dir = state_dir
        self.share_values = share_values
        self.file = batches_file(
            state_dir,
            share=share_values,
            lock_timeout=lock_timeout,
            compact_min_bytes=COMPACT_MIN_BYTES if compact_min_bytes is None else compact_min_bytes,
        )

    # -- reading -----------------------------------------------------------

    def raw(self, batch_id: str) -> dict[str, Any]:
        """The stored batch itself (not a copy): look, do not change."""
        with self.file.reading() as document:
            records = document["batches"]
            raw: dict[str, Any] = records[resolve_id(records, batch_id, "batch")]
            return raw

    def all_raw(self) -> list[dict[str, Any]]:
        """Every stored batch, oldest first (not copies: look, do not change)."""
        with self.file.reading() as document:
            return list(document["batches"].values())

    def finished(self, batch_id: str) -> bool:
        return bool(self.raw(batch_id).get("finished", False))

    def get(self, batch_id: str) -> Batch:
        with self.file.reading():
            batch = _validate(self.raw(batch_id))
        if self.share_values:
            for entry in batch.entries:
                share_fields_set(entry)
            for item in batch.items.values():
                share_fields_set(item)
        return batch

    def item(self, batch_id: str, name: str) -> Item:
        """One item, validated on its own: O(1), not O(batch)."""
        with self.file.reading() as document:
            item = Item.model_validate(document["batches"][batch_id]["items"][name])
        if self.share_values:
            share_fields_set(item)
        return item

    def lease(self, batch_id: str) -> Lease | None:
        with self.file.reading():
            raw = self.raw(batch_id).get("lease")
            return Lease.model_validate(raw) if raw else None

    def all(self) -> list[Batch]:
        """Every batch, oldest first."""
        with self.file.reading() as document:
            return [_validate(raw) for raw in document["batches"].values()]

    def ids(self) -> list[str]:
        """Every batch id, oldest first."""
        with self.file.reading() as document:
            return list(document["batches"])

    def created_before(self, moment: datetime) -> list[Batch]:
        """Every batch created before ``moment``, oldest first; only those
        are validated, however large the younger ones are."""
        with self.file.reading() as document:
            return [
                _validate(raw)
                for raw in document["batches"].values()
                if _CREATED_AT.validate_python(raw["created_at"]) < moment
            ]

    def find_newest(
        self, plan_hash: str, staging: str, content_hash: str | EllipsisType | None = ...
    ) -> Batch | None:
        """The newest batch with this key; without ``content_hash``, the
        newest for the plan and staging whatever its content."""
        with self.file.reading() as document:
            return _newest_with_key(document["batches"], plan_hash, staging, content_hash)

    def snapshots_in_use(self) -> set[str]:
        """The snapshot digests the stored batches' entries name. O(entries
        of every batch): for prune, not for a hot path."""
        with self.file.reading() as document:
            return {
                entry["snapshot"]
                for raw in document["batches"].values()
                for entry in raw["entries"]
                if entry.get("snapshot")
            }

    def subscribe(self) -> Subscription:
        """Follow the records folded from now on (see JournaledFile.subscribe)."""
        return self.file.subscribe()

    # -- writing -----------------------------------------------------------

    def create_or_get(
        self,
        plan_hash: str,
        staging: str,
        *,
        force_new: bool,
        new_batch: Callable[[], Batch],
        content_hash: str | None = None,
    ) -> tuple[Batch, bool]:
        """The newest batch keyed by (plan_hash, staging, content_hash), or a
        new one; the bool says whether it was resumed. Decided under the
        lock, so processes racing on the same key all end up with one batch."""
        with self.file.locked() as document:
            records = document["batches"]
            found = _newest_with_key(records, plan_hash, staging, content_hash)
            if not force_new and found:
                return found, True
            batch = new_batch()
            self._append(
                [{"op": "create", "batch": batch.model_dump(mode="json", exclude_defaults=True)}]
            )
            return batch, False

    def apply_items(
        self,
        batch_id: str,
        proposed: Mapping[str, Item],
        *,
        lease_token: str | None = None,
    ) -> None:
        """Merge proposed item versions into the stored batch (never backwards).
        With ``lease_token`` the write is fenced: a worker that lost its lease
        gets LeaseLost and changes nothing."""
        with self.file.locked():
            batch_id = self._fenced(batch_id, lease_token)
            if proposed:
                self._append([items_record(batch_id, proposed)])

    @contextlib.contextmanager
    def fenced(
        self, batch_id: str, lease_token: str | None
    ) -> Iterator[Callable[[Mapping[str, Item], Mapping[str, int] | None], None]]:
        """Hold the lock, fenced by the lease, for one step's decisions: the
        block may take the runs lock too (always after this one) and ends by
        calling the yielded ``record(items, demand)`` once; both land in
        one append."""
        with self.file.locked():
            batch_id = self._fenced(batch_id, lease_token)

            def record(items: Mapping[str, Item], demand: Mapping[str, int] | None) -> None:
                records: list[Record] = []
                if items:
                    records.append(items_record(batch_id, items))
                if demand is not None:
                    records.append({"op": "demand", "batch": batch_id, "demand": dict(demand)})
                self._append(records)

            yield record

    def decide(
        self,
        batch_id: str,
        decide: Callable[[Batch], list[Record]],
        *,
        lease_token: str | None = None,
    ) -> Batch:
        """Let ``decide`` look at the fresh batch under the lock and return
        the records to append (``cancel``, ``retry``: a decision from an
        older read could undo a concurrent one). Returns the batch after."""
        with self.file.locked():
            batch_id = self._fenced(batch_id, lease_token)
            self._append(decide(self.get(batch_id)))
            return self.get(batch_id)

    def _fenced(self, batch_id: str, lease_token: str | None) -> str:
        raw = self.raw(batch_id)
        if lease_token is not None:
            lease = raw.get("lease")
            if lease is None or lease.get("token") != lease_token:
                raise LeaseLost(
                    f"batch {raw['id']}: this worker's lease was taken over; it stops here",
                    details={"batch": raw["id"]},
                )
        return str(raw["id"])

    def swap_lease(
        self,
        batch_id: str,
        *,
        when: Callable[[Lease | None], bool],
        new_lease: Lease | None,
        unless_finished: bool = False,
    ) -> bool:
        """Replace the lease if ``when(current lease)`` holds, deciding under the
        lock (compare-and-swap). True if it was replaced. ``unless_finished``
        refuses to take the lease of a finished batch, so a look at a batch
        that just ended does not start a worker for it (a worker lets go of
        a finished batch with ``finish``)."""
        with self.file.locked():
            raw = self.raw(batch_id)
            current = raw.get("lease")
            if unless_finished and raw.get("finished"):
                return False
            if not when(Lease.model_validate(current) if current else None):
                return False
            self._append(
                [
                    {
                        "op": "lease",
                        "batch": raw["id"],
                        "lease": new_lease.model_dump(mode="json") if new_lease else None,
                    }
                ]
            )
            return True

    def finish(
        self,
        batch_id: str,
        lease_token: str,
        *,
        write_view: Callable[[Mapping[str, Any]], int] | None = None,
        last_words: Callable[[str | None], None] | None = None,
    ) -> bool:
        """The worker letting go of a batch it saw done: release the lease
        and mark the batch finished, in one write, decided under the lock.
        Not if an item is queued again (a ``retry`` since the worker's last
        step): then nothing is written, the lease stays, and False says the
        worker goes on. True also when the lease is no longer ours (there is
        nothing of ours to let go). O(items), once per batch.

        Before the mark, still under the lock so that nothing changes the
        batch in between: ``write_view(batch)`` writes its final view
        (``final_views``; returns the bytes written), and ``last_words(why
        the view could not be written, or None)`` lets the worker log its
        last lines, so that whoever waits for the mark finds them written. A
        view that cannot be written (a full disk) is only not there: readers
        join the records."""
        with self.file.locked():
            raw = self.raw(batch_id)
            current = raw.get("lease")
            if not current or current.get("token") != lease_token:
                return True
            if any(item.get("state", "queued") == "queued" for item in raw["items"].values()):
                return False
            trouble = None
            if write_view is not None:
                try:
                    self.file.bytes_written += write_view(raw)
                except OSError as exc:
                    trouble = f"{exc.filename or 'views'}: {exc.strerror}"
                except Exception as exc:  # a view is never worth a batch: it is optional
                    trouble = f"{type(exc).__name__}: {exc}"
            if last_words is not None:
                last_words(trouble)
            # Not through _append: the view just written is the finished batch's.
            self.file.append(
                [
                    {"op": "lease", "batch": raw["id"], "lease": None},
                    {"op": "finished", "batch": raw["id"]},
                ]
            )
            return True

    def demands(self) -> list[BatchDemand]:
        """What every batch wants of the fleet, oldest first: O(batches),
        whatever their size."""
        with self.file.reading() as document:
            return [
                BatchDemand(
                    batch_id,
                    Lease.model_validate(raw["lease"]) if raw.get("lease") else None,
                    bool(raw.get("cancelled")),
                    dict(raw.get("demand") or {}),
                    int(raw.get("priority", DEFAULT_PRIORITY)),
                )
                for batch_id, raw in document["batches"].items()
            ]

    def remove(self, batch_ids: set[str]) -> None:
        with self.file.locked():
            self._append([{"op": "remove", "batches": sorted(batch_ids)}])

    @contextlib.contextmanager
    def dispatch_paused(self) -> Iterator[None]:
        """Hold the batches lock, under which every batch's dispatch decides
        and records: no dispatch commits meanwhile, and one that read the
        fleet's state before has committed already."""
        with self.file.locked():
            yield

    @contextlib.contextmanager
    def removing(self) -> Iterator[Callable[[Collection[str]], None]]:
        """Hold the lock while choosing batches to remove: reads in the block
        see the fresh file and nobody can change a batch meanwhile; the block
        may take the runs lock too (always after this one). The yielded
        ``remove(ids)`` removes them and folds the journal into a new
        snapshot at once, so the file shrinks by what was removed."""
        with self.file.locked():

            def remove(batch_ids: Collection[str]) -> None:
                if batch_ids:
                    self._append([{"op": "remove", "batches": sorted(batch_ids)}], compact=True)

            yield remove

    def forget_views(self, batch_ids: list[str]) -> None:
        """Remove these batches' final views; call under the lock (in
        ``removing``), before anything of theirs is removed."""
        final_views.remove(self.state_dir, batch_ids)

    def _append(self, records: list[Record], *, compact: bool = False) -> None:
        """Append under the lock (held by the caller), first removing the
        final view of every batch the records change: a view is only ever
        the rendering of its batch as finished. Costs one unlink attempt per
        record; a finished batch is rarely changed again (retry, prune)."""
        changed: list[str] = []
        for record in records:
            if record["op"] == "remove":
                changed.extend(record["batches"])
            elif record["op"] not in ("create", "finished"):
                changed.append(record["batch"])
        final_views.remove(self.state_dir, changed)
        self.file.append(records, compact=compact)

    def worker_log(self, batch_id: str) -> Path:
        """Where the batch's detached worker writes its log."""
        return self.state_dir / "workers" / f"{batch_id}.log"


def _validate(raw: Any) -> Batch:
    with without_gc():
        return Batch.model_validate(raw)


def _newest_with_key(
    records: Mapping[str, Any],
    plan_hash: str,
    staging: str,
    content_hash: str | EllipsisType | None,
) -> Batch | None:
    """``content_hash`` ``...``: any content. O(batches)."""
    newest = None
    for raw in records.values():
        if (
            raw["plan_hash"] == plan_hash
            and raw["staging"] == staging
            and (content_hash is ... or raw.get("content_hash") == content_hash)
        ):
            newest = raw
    return _validate(newest) if newest is not None else None
