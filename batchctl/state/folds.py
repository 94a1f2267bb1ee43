"""Folding journal records into the documents they describe: plain dicts,
no models, so a read (``status``) costs the records, not their validation.

``fold_batches`` folds batches.json records, ``RunFold`` runs.json records
(keeping the run index current as it goes). Each is a pure function of the
document and one record: replaying a journal in any order of equal records
ends in the same document (see ``merge`` for items, ``apply_run_update`` for
runs).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchctl.model.errors import NotFound
from batchctl.model.rules import RUN_STATUS_RANK, TERMINAL_STATUSES
from batchctl.state.journal import COMPACT_MIN_BYTES, DEFAULT_LOCK_TIMEOUT_S, JournaledFile
from batchctl.state.memory import intern_values
from batchctl.state.merge import merge_item

Document = dict[str, Any]
Record = dict[str, Any]

BATCHES_SCHEMA_VERSION = 2
RUNS_SCHEMA_VERSION = 2
MIN_ID_PREFIX = 4

# Values many runs repeat (see memory.intern_values).
SHARED_RUN_VALUES = (
    "batch_id",
    "machine",
    "test_dir",
    "test_dir_hash",
    "status",
    "created_at",
    "started_at",
    "ended_at",
    "message",
    "error_code",
)


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


_SHARED_ENTRY_VALUES = ("dir", "abs_dir", "selector", "retry_on", "snapshot", "env_pass")
_SHARED_ITEM_VALUES = ("state", "machine", "updated_at", "not_before", "error_code")


def share_batch_values(batch: dict[str, Any]) -> None:
    for entry in batch.get("entries", ()):
        intern_values(entry, _SHARED_ENTRY_VALUES)
    for item in batch.get("items", {}).values():
        intern_values(item, _SHARED_ITEM_VALUES)


def share_document_values(document: Document) -> None:
    for batch in document["batches"].values():
        share_batch_values(batch)


def fold_batches(document: Document, record: Record, *, share: bool = False) -> None:
    """Apply one journal record. Records about batches that are gone (pruned)
    are ignored, as are item names a batch does not have: the set of items
    is fixed at creation."""
    batches: dict[str, Any] = document["batches"]
    op = record["op"]
    if op == "create":
        batch = record["batch"]
        if share:
            share_batch_values(batch)
        batches.setdefault(batch["id"], batch)
        return
    if op == "remove":
        for batch_id in record["batches"]:
            batches.pop(batch_id, None)
        return
    batch = batches.get(record["batch"])
    if batch is None:
        return
    if op == "items":
        items = batch["items"]
        for name, proposed in record["items"].items():
            stored = items.get(name)
            if stored is not None:
                if share:
                    intern_values(proposed, _SHARED_ITEM_VALUES)
                items[name] = merge_item(stored, proposed)
    elif op == "cancel":
        batch["cancelled"] = True
    elif op == "uncancel":
        batch["cancelled"] = False
    elif op == "lease":
        batch["lease"] = record["lease"]
    elif op == "demand":
        batch["demand"] = record["demand"]
    elif op == "finished":
        batch["finished"] = True
    elif op == "reopen":
        batch["finished"] = False
    else:
        raise ValueError(f"unknown batches record {op!r}")


@dataclass
class RunIndex:
    """What the fold derives from the runs, kept current record by record."""

    live_by_machine: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # The same live runs by batch: how many slots each batch holds (fair sharing).
    live_by_batch: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_attempt: dict[tuple[str, str, int], str] = field(default_factory=dict)
    # Every attempt's run, so pruning a batch costs its runs, not all runs kept.
    by_batch: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, raw: Mapping[str, Any]) -> None:
        self.by_attempt[(raw["batch_id"], raw["item"], raw["attempt"])] = raw["id"]
        self.by_batch[raw["batch_id"]].add(raw["id"])
        if raw["status"] not in TERMINAL_STATUSES:
            self.live_by_machine[raw["machine"]].add(raw["id"])
            self.live_by_batch[raw["batch_id"]].add(raw["id"])

    def drop(self, raw: Mapping[str, Any]) -> None:
        self.ended(raw)
        key = (raw["batch_id"], raw["item"], raw["attempt"])
        if self.by_attempt.get(key) == raw["id"]:
            del self.by_attempt[key]
        of_batch = self.by_batch.get(raw["batch_id"])
        if of_batch is not None:
            of_batch.discard(raw["id"])
            if not of_batch:
                del self.by_batch[raw["batch_id"]]

    def ended(self, raw: Mapping[str, Any]) -> None:
        """The run holds no slot any more."""
        self.live_by_machine[raw["machine"]].discard(raw["id"])
        live = self.live_by_batch.get(raw["batch_id"])
        if live is not None:
            live.discard(raw["id"])
            if not live:
                del self.live_by_batch[raw["batch_id"]]


def apply_run_update(stored: dict[str, Any], changes: Mapping[str, Any]) -> bool:
    """Apply a transition to a stored run in place. Status only moves
    forward and a terminal run is final. True if it applied."""
    if stored["status"] in TERMINAL_STATUSES:
        return False
    status = changes.get("status", stored["status"])
    if RUN_STATUS_RANK[status] < RUN_STATUS_RANK[stored["status"]]:
        return False
    stored.update(changes)
    return True


class RunFold:
    """Folds runs.json records, keeping ``index`` current record by record.
    ``share``: share repeated strings (a long-lived reader, the worker).
    ``indexed=False``: a one-off reader that only looks runs up by id (the
    quick status), spared an index of every run it would never use."""

    def __init__(self, *, share: bool = False, indexed: bool = True) -> None:
        self.share = share
        self.indexed = indexed
        self.index = RunIndex()

    def index_all(self, document: Document) -> None:
        self.index = RunIndex()
        if not self.indexed:
            return
        for raw in document["runs"].values():
            if self.share:
                intern_values(raw, SHARED_RUN_VALUES)
            self.index.add(raw)

    def __call__(self, document: Document, record: Record) -> None:
        runs: dict[str, Any] = document["runs"]
        op = record["op"]
        if op == "create":
            for raw in record["runs"]:
                if self.share:
                    intern_values(raw, SHARED_RUN_VALUES)
                if raw["id"] not in runs:
                    runs[raw["id"]] = raw
                    if self.indexed:
                        self.index.add(raw)
        elif op == "update":
            stored = runs.get(record["run"])
            if self.share:
                intern_values(record["set"], SHARED_RUN_VALUES)
            if (
                stored is not None
                and apply_run_update(stored, record["set"])
                and stored["status"] in TERMINAL_STATUSES
                and self.indexed
            ):
                self.index.ended(stored)
        elif op == "remove":
            for run_id in record["runs"]:
                raw = runs.pop(run_id, None)
                if raw is not None and self.indexed:
                    self.index.drop(raw)
        else:
            raise ValueError(f"unknown runs record {op!r}")


def batches_file(
    state_dir: Path,
    *,
    share: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    compact_min_bytes: int = COMPACT_MIN_BYTES,
) -> JournaledFile:
    """batches.json (snapshot + journal) folded by ``fold_batches``."""
    return JournaledFile(
        state_dir / "batches.json",
        schema_version=BATCHES_SCHEMA_VERSION,
        collection="batches",
        fold=functools.partial(fold_batches, share=share),
        on_load=share_document_values if share else None,
        lock_timeout=lock_timeout,
        compact_min_bytes=compact_min_bytes,
    )


def runs_file(
    state_dir: Path,
    fold: RunFold,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    compact_min_bytes: int = COMPACT_MIN_BYTES,
) -> JournaledFile:
    """runs.json (snapshot + journal) folded by ``fold``, which keeps its index."""
    return JournaledFile(
        state_dir / "runs.json",
        schema_version=RUNS_SCHEMA_VERSION,
        collection="runs",
        fold=fold,
        on_load=fold.index_all,
        lock_timeout=lock_timeout,
        compact_min_bytes=compact_min_bytes,
    )
