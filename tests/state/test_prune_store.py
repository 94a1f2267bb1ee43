"""What prune asks of the stores: every run of a batch from the index, and
removals that leave smaller files, whoever reads them next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchctl.model.models import Batch, Entry, Item
from batchctl.state.batches import BatchStore
from batchctl.state.runs import PrepareRequest, RunStore

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def batch(batch_id: str, created_at: datetime) -> Batch:
    entry = Entry(
        name="a",
        dir="a",
        abs_dir="/x/a",
        selector="tag:local",
        timeout_s=60,
        retries=0,
        retry_on=("error",),
    )
    return Batch(
        id=batch_id,
        plan_hash=batch_id,
        staging="s",
        created_by="u@h",
        created_at=created_at,
        expected_count=1,
        source="inline",
        entries=(entry,),
        items={"a": Item(name="a")},
    )


def prepare(store: RunStore, batch_id: str, attempts: int) -> set[str]:
    results = store.prepare_many(
        [
            PrepareRequest(batch_id, item, attempt, ["m"], "/x/" + item, "h")
            for item in ("a", "b")
            for attempt in range(1, attempts + 1)
        ],
        slots={"m": 100},
        now=NOW,
    )
    return {result.run.id for result in results if result.run is not None}


def test_the_runs_of_a_batch_come_from_the_index_and_go_with_it(state_dir: Path) -> None:
    store = RunStore(state_dir)
    pruned = prepare(store, "old", attempts=2)
    kept = prepare(store, "young", attempts=1)
    assert store.ids_of_batches(["old"]) == pruned
    journal_before = (state_dir / "runs.journal").stat().st_size

    assert store.remove_batches(["old", "never-existed"]) == pruned

    assert set(store.file.read()["runs"]) == kept
    assert store.ids_of_batches(["old"]) == set()
    assert "old" not in store.index.by_batch
    assert all(("old", item, 1) not in store.index.by_attempt for item in ("a", "b"))
    # Compacted: the journal is back to its header, the snapshot holds the rest.
    assert (state_dir / "runs.journal").stat().st_size < journal_before
    fresh = RunStore(state_dir)
    assert set(fresh.file.read()["runs"]) == kept
    assert fresh.ids_of_batches(["young", "old"]) == kept


def test_removing_nothing_writes_nothing(state_dir: Path) -> None:
    store = RunStore(state_dir)
    prepare(store, "b", attempts=1)
    before = (state_dir / "runs.journal").read_bytes()

    assert store.remove_batches(["other"]) == set()

    assert (state_dir / "runs.journal").read_bytes() == before
    assert not (state_dir / "runs.json").exists()


def add(store: BatchStore, made: Batch) -> None:
    store.create_or_get(made.plan_hash, made.staging, force_new=True, new_batch=lambda: made)


def test_batches_chosen_by_age_are_removed_and_the_file_compacted(state_dir: Path) -> None:
    store = BatchStore(state_dir)
    for made in (
        batch("b-old", NOW - timedelta(days=40)),
        batch("b-mid", NOW - timedelta(days=20)),
        batch("b-new", NOW - timedelta(days=1)),
    ):
        add(store, made)
    journal_before = (state_dir / "batches.journal").stat().st_size

    with store.removing() as remove:
        chosen = store.created_before(NOW - timedelta(days=10))
        assert [b.id for b in chosen] == ["b-old", "b-mid"]
        remove(["b-old"])

    assert store.ids() == ["b-mid", "b-new"]
    assert BatchStore(state_dir).ids() == ["b-mid", "b-new"]
    assert (state_dir / "batches.journal").stat().st_size < journal_before
