"""batches.json: dispatch decisions only (SPEC §3, §5).

Reads validate just the batch asked for; the other batches stay raw dicts and
are written back untouched, so the cost of a change is one JSON parse and one
dump of the file, not a model round trip of every batch ever kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batchctl.model.errors import LeaseLost, NotFound
from batchctl.model.models import Batch, Item, Lease
from batchctl.state.jsonfile import DEFAULT_LOCK_TIMEOUT_S, Document, JsonStateFile
from batchctl.state.memory import without_gc
from batchctl.state.merge import merge_items

BATCHES_SCHEMA_VERSION = 1
MIN_ID_PREFIX = 4


def resolve_id(records: Mapping[str, Any], given: str, kind: str) -> str:
    """An exact id, or a unique prefix of at least MIN_ID_PREFIX characters."""
    if given in records:
        return given
    if len(given) >= MIN_ID_PREFIX:
        matches = [key for key in records if key.startswith(given)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(
                f"{kind} id {given!r} is ambiguous: it starts {len(matches)} {kind} ids",
                details={kind: given, "matches": matches[:10]},
            )
    raise NotFound(f"no {kind} with id {given!r}", details={kind: given})


class BatchStore:
    def __init__(self, state_dir: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.file = JsonStateFile(
            state_dir / "batches.json",
            schema_version=BATCHES_SCHEMA_VERSION,
            collection="batches",
            lock_timeout=lock_timeout,
        )

    def get(self, batch_id: str) -> Batch:
        records = self.file.read()["batches"]
        return _validate(records[resolve_id(records, batch_id, "batch")])

    def all(self) -> list[Batch]:
        """Every batch, oldest first."""
        return [_validate(raw) for raw in self.file.read()["batches"].values()]

    def find_newest(self, plan_hash: str, staging: str) -> Batch | None:
        return _newest_with_key(self.file.read()["batches"], plan_hash, staging)

    def create_or_get(
        self, plan_hash: str, staging: str, *, force_new: bool, new_batch: Callable[[], Batch]
    ) -> tuple[Batch, bool]:
        """The newest batch keyed by (plan_hash, staging), or a new one; the
        bool says whether it was resumed. Decided under the lock, so processes
        racing on the same key all end up with one batch."""

        def change(document: Document) -> tuple[Document | None, tuple[Batch, bool]]:
            records = document["batches"]
            if not force_new and (found := _newest_with_key(records, plan_hash, staging)):
                return None, (found, True)
            batch = new_batch()
            records[batch.id] = batch.model_dump(mode="json")
            return document, (batch, False)

        return self.file.update(change)

    def apply_items(
        self,
        batch_id: str,
        proposed: Mapping[str, Item],
        *,
        lease_token: str | None = None,
        cancelled: bool | None = None,
    ) -> Batch:
        """Merge proposed item versions into the stored batch (never backwards).

        With ``lease_token`` the write is fenced: a worker that lost its lease
        gets LeaseLost and changes nothing. ``cancelled`` is set only by
        ``cancel`` (True) and ``retry`` (False); other writers leave it.
        """

        def change(document: Document) -> tuple[Document | None, Batch]:
            records = document["batches"]
            stored = _validate(records[resolve_id(records, batch_id, "batch")])
            _check_fence(stored, lease_token)
            merged = stored.model_copy(
                update={
                    "items": merge_items(stored.items, proposed),
                    "cancelled": stored.cancelled if cancelled is None else cancelled,
                }
            )
            if merged == stored:
                return None, stored
            records[stored.id] = merged.model_dump(mode="json")
            return document, merged

        return self.file.update(change)

    def swap_lease(
        self,
        batch_id: str,
        *,
        when: Callable[[Lease | None], bool],
        new_lease: Lease | None,
    ) -> Batch | None:
        """Replace the lease if ``when(current lease)`` holds, deciding under the
        lock (compare-and-swap). Returns the updated batch, or None."""

        def change(document: Document) -> tuple[Document | None, Batch | None]:
            records = document["batches"]
            stored = _validate(records[resolve_id(records, batch_id, "batch")])
            if not when(stored.lease):
                return None, None
            updated = stored.model_copy(update={"lease": new_lease})
            records[stored.id] = updated.model_dump(mode="json")
            return document, updated

        return self.file.update(change)

    def older_active(self, batch: Batch, is_served: Callable[[Lease | None], bool]) -> list[Batch]:
        """Batches created before ``batch`` (the file keeps creation order), not
        cancelled, whose worker is live."""
        older: list[Batch] = []
        for batch_id, raw in self.file.read()["batches"].items():
            if batch_id == batch.id:
                break
            lease = raw.get("lease")
            if not raw.get("cancelled") and lease and is_served(Lease.model_validate(lease)):
                older.append(_validate(raw))
        return older

    def remove(self, batch_ids: set[str]) -> None:
        def change(document: Document) -> tuple[Document | None, None]:
            records = document["batches"]
            for batch_id in batch_ids:
                records.pop(batch_id, None)
            return document, None

        self.file.update(change)


def _validate(raw: Any) -> Batch:
    with without_gc():
        return Batch.model_validate(raw)


def _check_fence(stored: Batch, lease_token: str | None) -> None:
    if lease_token is None:
        return
    if stored.lease is None or stored.lease.token != lease_token:
        raise LeaseLost(
            f"batch {stored.id}: this worker's lease was taken over; it stops here",
            details={"batch": stored.id},
        )


def _newest_with_key(records: Mapping[str, Any], plan_hash: str, staging: str) -> Batch | None:
    newest = None
    for raw in records.values():
        if raw["plan_hash"] == plan_hash and raw["staging"] == staging:
            newest = raw
    return _validate(newest) if newest is not None else None
