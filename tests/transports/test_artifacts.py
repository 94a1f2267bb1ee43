"""Reading a run's artifacts as untrusted files: no links followed, no FIFOs
opened, nothing larger than the limit read; and a failed log's last lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchctl.transports.artifacts import Unreadable, read_capped, xml_files
from batchctl.transports.logs import tail_text


def test_xml_files_are_found_at_any_depth_without_entering_links(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    (artifacts / "reports" / "deep").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.xml").write_text("<testsuite/>")
    for name in ("junit.xml", "reports/deep/B.XML", "reports/a.xml", "notes.txt"):
        (artifacts / name).write_text("<testsuite/>")
    (artifacts / "linked").symlink_to(outside, target_is_directory=True)
    warnings: list[str] = []

    found = xml_files(artifacts, warn=warnings.append)

    assert [path.relative_to(artifacts).as_posix() for path in found] == [
        "junit.xml",
        "reports/a.xml",
        "reports/deep/B.XML",
    ]
    assert warnings == []
    assert xml_files(tmp_path / "none", warn=warnings.append) == []
    assert len(xml_files(artifacts, warn=warnings.append, limit=2)) == 2
    assert warnings == [f"{artifacts} holds more than 2 XML files; only the first 2 were read"]


def test_only_regular_files_within_the_limit_are_read(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.xml"
    target.write_bytes(b"<testsuite/>")
    link = tmp_path / "junit.xml"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)

    assert read_capped(target) == b"<testsuite/>"
    with pytest.raises(Unreadable, match="is a symbolic link"):
        read_capped(link)
    with pytest.raises(Unreadable, match="is not a regular file"):
        read_capped(fifo)  # never blocks waiting for a writer
    with pytest.raises(Unreadable, match="larger than"):
        read_capped(target, max_bytes=4)
    with pytest.raises(Unreadable, match="No such file"):
        read_capped(tmp_path / "gone.xml")


def test_a_log_tail_is_its_last_lines_and_at_most_its_last_bytes(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 101)) + b"\xff end")

    assert tail_text(log, 2) == "line 100\n\ufffd end"
    assert tail_text(log, 50, max_bytes=12) == "…ne 100\n\ufffd end"
    assert tail_text(tmp_path / "missing.log", 5).startswith("(cannot read ")
