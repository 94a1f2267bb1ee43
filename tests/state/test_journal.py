"""The snapshot + journal file on its own: incremental reads, torn tails,
compaction and its crashes, leftovers of killed writers, write volume."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchctl.model.errors import StateUnreadable
from batchctl.model.models import Item, ItemState
from batchctl.state import journal
from batchctl.state.batches import BatchStore
from batchctl.state.journal import JournaledFile, json_pieces
from tests.state.test_store import sample_batch


def counter_file(path: Path, **kwargs: Any) -> JournaledFile:
    """A journaled file whose records add to named counters."""

    def fold(document: dict[str, Any], record: dict[str, Any]) -> None:
        counters = document["counters"]
        counters[record["name"]] = counters.get(record["name"], 0) + record["add"]

    return JournaledFile(path, schema_version=1, collection="counters", fold=fold, **kwargs)


def add(file: JournaledFile, name: str, amount: int = 1) -> None:
    with file.locked():
        file.append([{"name": name, "add": amount}])


def test_a_reader_folds_only_what_was_appended_since_its_last_read(state_dir: Path) -> None:
    state_dir.mkdir()
    writer, reader = counter_file(state_dir / "c.json"), counter_file(state_dir / "c.json")
    follow = reader.subscribe()
    add(writer, "a")
    assert reader.read()["counters"] == {"a": 1}
    assert follow.drain() is None  # the first read loads whole

    add(writer, "a", 2)
    add(writer, "b")

    assert follow.drain() == [{"name": "a", "add": 2}, {"name": "b", "add": 1}]
    assert reader.read()["counters"] == {"a": 3, "b": 1}
    assert follow.drain() == []


def test_a_torn_last_record_is_ignored_then_cut_off_by_the_next_writer(state_dir: Path) -> None:
    state_dir.mkdir()
    file = counter_file(state_dir / "c.json")
    add(file, "a")
    with open(file.journal_path, "ab") as journal:
        journal.write(b'{"name": "a", "ad')  # a writer killed mid-append

    assert counter_file(state_dir / "c.json").read()["counters"] == {"a": 1}
    add(counter_file(state_dir / "c.json"), "b")

    assert counter_file(state_dir / "c.json").read()["counters"] == {"a": 1, "b": 1}
    assert file.journal_path.read_bytes().count(b"\n") == 3  # header + two records


def test_compaction_folds_the_journal_into_a_snapshot_readers_follow(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / "c.json"
    writer = counter_file(path, compact_min_bytes=200)
    reader = counter_file(path)
    follow = reader.subscribe()
    add(writer, "a")
    reader.read()
    follow.drain()

    for _ in range(20):
        add(writer, "a")

    assert orjson.loads(path.read_bytes())["generation"] >= 1
    assert reader.read()["counters"] == {"a": 21}
    assert follow.drain() is None  # another process compacted: reloaded whole
    assert counter_file(path).read()["counters"] == {"a": 21}


def test_a_compaction_cut_short_leaves_a_stale_journal_that_is_ignored(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / "c.json"
    file = counter_file(path)
    add(file, "a", 5)
    stale_journal = file.journal_path.read_bytes()
    with file.locked():
        file.compact()
    # A crash after the new snapshot and before the new journal: the journal
    # of the previous generation is still there, its records already folded.
    file.journal_path.write_bytes(stale_journal)

    assert counter_file(path).read()["counters"] == {"a": 5}
    add(counter_file(path), "a")
    assert counter_file(path).read()["counters"] == {"a": 6}


def test_temp_files_of_a_killed_writer_are_removed_under_the_lock(state_dir: Path) -> None:
    state_dir.mkdir()
    leftover = state_dir / ".c.json.abc123"
    leftover.write_bytes(b"half a snapshot")
    unrelated = state_dir / ".other.json.abc123"
    unrelated.write_bytes(b"not ours")

    add(counter_file(state_dir / "c.json"), "a")

    assert not leftover.exists()
    assert unrelated.exists()


def test_a_damaged_record_is_refused_and_nothing_is_written(state_dir: Path) -> None:
    state_dir.mkdir()
    file = counter_file(state_dir / "c.json")
    add(file, "a")
    with open(file.journal_path, "ab") as journal:
        journal.write(b"garbage\n")
    before = file.journal_path.read_bytes()

    with pytest.raises(StateUnreadable, match="damaged record"):
        add(counter_file(state_dir / "c.json"), "b")
    assert file.journal_path.read_bytes() == before


def test_one_item_change_in_a_large_batch_writes_bytes_of_the_change(state_dir: Path) -> None:
    names = tuple(f"item-{n:05d}" for n in range(10_000))
    store = BatchStore(state_dir)
    store.create_or_get("h", "s", force_new=False, new_batch=lambda: sample_batch("big", names))
    with store.file.locked():
        store.file.compact()
    before = store.file.bytes_written

    store.apply_items(
        "big", {"item-00042": Item(name="item-00042", state=ItemState.DISPATCHED, run_id="r")}
    )

    written = store.file.bytes_written - before
    assert written < 1_000, written
    assert BatchStore(state_dir).get("big").items["item-00042"].run_id == "r"


def test_a_file_written_by_the_previous_single_file_format_is_read(state_dir: Path) -> None:
    state_dir.mkdir()
    batch = sample_batch("old").model_dump(mode="json")
    (state_dir / "batches.json").write_bytes(
        orjson.dumps({"schema_version": 1, "batches": {"old": batch}})
    )
    store = BatchStore(state_dir)

    store.apply_items("old", {"a": Item(name="a", state=ItemState.DISPATCHED, run_id="r")})

    assert BatchStore(state_dir).get("old").items["a"].run_id == "r"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=6)
    ),
    max_leaves=40,
)


@given(json_values)
def test_a_snapshot_written_in_pieces_is_the_same_text(value: Any) -> None:
    """Snapshots are written piece by piece (never the whole text in memory):
    the pieces join to exactly what one dump gives, at any piece size."""
    kept = journal.PIECE_MEMBERS
    try:
        for members in (1, 2, 1000):
            journal.PIECE_MEMBERS = members
            assert b"".join(json_pieces(value)) == orjson.dumps(value)
    finally:
        journal.PIECE_MEMBERS = kept


def test_a_compacted_file_reads_back_the_same(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "PIECE_MEMBERS", 3)
    store = BatchStore(state_dir)
    for number in range(7):
        store.create_or_get(
            f"hash{number}",
            "",
            force_new=True,
            new_batch=functools.partial(sample_batch, f"b{number}"),
        )
    before = orjson.loads(orjson.dumps(store.file.read()["batches"]))
    with store.file.locked():
        store.file.compact()

    assert len(before) == 7
    assert BatchStore(state_dir).file.read()["batches"] == before
