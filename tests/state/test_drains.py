"""The drained machines file: written whole under its lock, read by stat."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchctl.model.errors import StateTooNew, StateUnreadable
from batchctl.state.drains import DrainStore

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def test_a_drain_is_seen_by_another_reader_and_gone_after_resume(state_dir: Path) -> None:
    writer, reader = DrainStore(state_dir), DrainStore(state_dir)
    assert reader.drained() == {}

    writer.drain("m1", reason="disk swap", by="a@h", now=NOW)

    assert reader.drained()["m1"].reason == "disk swap"
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o600
    assert writer.resume("m1") is not None
    assert writer.resume("m1") is None
    assert reader.drained() == {}


def test_an_unchanged_file_is_not_read_again(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DrainStore(state_dir)
    store.drain("m1", reason="r", by="a@h", now=NOW)
    reads = 0
    read = store.file.read

    def counting_read() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return read()

    monkeypatch.setattr(store.file, "read", counting_read)
    for _ in range(5):
        assert set(store.drained()) == {"m1"}
    assert reads == 1
    DrainStore(state_dir).drain("m2", reason="r", by="a@h", now=NOW)
    assert set(store.drained()) == {"m1", "m2"}
    assert reads == 2


def test_draining_again_keeps_its_time_and_replaces_its_reason(state_dir: Path) -> None:
    store = DrainStore(state_dir)
    first, before = store.drain("m1", reason="one", by="a@h", now=NOW)
    again, before_again = store.drain("m1", reason="two", by="b@h", now=NOW.replace(hour=5))
    assert (before, before_again) == (False, True)
    assert (again.reason, again.since, again.by) == ("two", first.since, "b@h")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"{not json", StateUnreadable),
        (b'{"schema_version": 1, "drained": {"m1": {"since": "x"}}}', StateUnreadable),
        (b'{"schema_version": 9, "drained": {}}', StateTooNew),
    ],
)
def test_a_damaged_or_newer_file_is_refused_and_left_untouched(
    state_dir: Path, text: bytes, error: type[Exception]
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "machines.json"
    path.write_bytes(text)
    store = DrainStore(state_dir)
    with pytest.raises(error):
        store.drained()
    with pytest.raises(error):
        store.drain("m2", reason="r", by="a@h", now=NOW)
    assert path.read_bytes() == text
