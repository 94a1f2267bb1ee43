"""The stores against real files and real locks."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchctl.model.errors import LockTimeout, StateTooNew, StateUnreadable
from batchctl.model.models import Batch, Entry, Item, ItemState
from batchctl.state.batches import BatchStore
from tests.helpers import lock_held_elsewhere

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def sample_batch(batch_id: str = "b1", names: tuple[str, ...] = ("a", "b")) -> Batch:
    entries = tuple(
        Entry(
            name=n,
            dir=n,
            abs_dir=f"/x/{n}",
            selector="tag:local",
            timeout_s=60,
            retries=0,
            retry_on=("error",),
        )
        for n in names
    )
    return Batch(
        id=batch_id,
        plan_hash="h",
        staging="s",
        created_by="u@h",
        created_at=NOW,
        expected_count=len(names),
        source="inline",
        entries=entries,
        items={n: Item(name=n) for n in names},
    )


def test_create_or_get_resumes_and_new_forces_a_fresh_batch(state_dir: Path) -> None:
    store = BatchStore(state_dir)
    first, resumed = store.create_or_get(
        "h", "s", force_new=False, new_batch=lambda: sample_batch("b1")
    )
    assert (first.id, resumed) == ("b1", False)
    again, resumed = store.create_or_get(
        "h", "s", force_new=False, new_batch=lambda: sample_batch("b9")
    )
    assert (again.id, resumed) == ("b1", True)
    forced, resumed = store.create_or_get(
        "h", "s", force_new=True, new_batch=lambda: sample_batch("b2")
    )
    assert (forced.id, resumed) == ("b2", False)
    newest, resumed = store.create_or_get(
        "h", "s", force_new=False, new_batch=lambda: sample_batch("b9")
    )
    assert (newest.id, resumed) == ("b2", True)


def test_files_and_directory_are_private(state_dir: Path) -> None:
    BatchStore(state_dir).create_or_get("h", "s", force_new=False, new_batch=sample_batch)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    store = BatchStore(state_dir)
    with store.file.locked():
        store.file.compact()
    for name in ("batches.json", "batches.journal", "batches.json.lock"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name


def test_stale_snapshot_written_back_cannot_move_items_backwards(state_dir: Path) -> None:
    store = BatchStore(state_dir)
    store.create_or_get("h", "s", force_new=False, new_batch=sample_batch)
    stale = store.get("b1")
    dispatched = Item(name="a", state=ItemState.DISPATCHED, run_id="r1", machine="m")
    store.apply_items("b1", {"a": dispatched})

    # A writer that read before the dispatch writes its whole snapshot back.
    store.apply_items("b1", stale.items)

    assert store.get("b1").items["a"] == dispatched
    assert BatchStore(state_dir).get("b1").items["a"] == dispatched


def test_garbage_file_is_refused_and_left_untouched(state_dir: Path) -> None:
    store = BatchStore(state_dir)
    store.create_or_get("h", "s", force_new=False, new_batch=sample_batch)
    store.apply_items("b1", {"a": Item(name="a", state=ItemState.DISPATCHED, run_id="r")})
    for _ in range(2):  # two snapshots: the second keeps the first as last-good
        with store.file.locked():
            store.file.compact()
    path = state_dir / "batches.json"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    truncated = path.read_bytes()

    with pytest.raises(StateUnreadable, match="last good snapshot"):
        BatchStore(state_dir).apply_items(
            "b1", {"b": Item(name="b", state=ItemState.DISPATCHED, run_id="r2")}
        )

    assert path.read_bytes() == truncated
    # The copy kept beside it is the version before the last write, intact.
    assert (state_dir / "batches.json.last-good").read_bytes().startswith(b"{")


def test_newer_schema_is_refused_and_left_untouched(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / "batches.json"
    path.write_text('{"schema_version": 99, "batches": {}}')
    with pytest.raises(StateTooNew, match="newer batchctl"):
        BatchStore(state_dir).create_or_get("h", "s", force_new=False, new_batch=sample_batch)
    assert path.read_text() == '{"schema_version": 99, "batches": {}}'


def test_lock_wait_is_bounded_and_names_the_lock(state_dir: Path) -> None:
    state_dir.mkdir()
    lock_path = state_dir / "batches.json.lock"
    store = BatchStore(state_dir, lock_timeout=0.3)

    with lock_held_elsewhere(lock_path), pytest.raises(LockTimeout) as caught:
        store.create_or_get("h", "s", force_new=False, new_batch=sample_batch)

    assert str(lock_path) in caught.value.message


def test_shared_field_name_sets_change_nothing_a_model_shows(state_dir: Path) -> None:
    """A long-lived store shares one set of field names among models; copies
    and dumps behave exactly as with a set of their own."""
    store = BatchStore(state_dir, share_values=True)
    store.create_or_get("h", "", force_new=True, new_batch=lambda: sample_batch("b1", ("a", "b")))
    batch = store.get("b1")
    first, second = batch.items["a"], batch.items["b"]
    assert first.model_fields_set is second.model_fields_set

    moved = first.model_copy(update={"state": ItemState.DISPATCHED, "run_id": "r1"})

    assert "run_id" in moved.model_fields_set
    assert "run_id" not in second.model_fields_set
    assert second.model_dump(exclude_unset=True) == {"name": "b"}
    assert batch.entries[0].model_fields_set is batch.entries[1].model_fields_set
