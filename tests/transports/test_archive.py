"""Archives from machines are extracted safely: crafted tar streams, each
refused with nothing written anywhere."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from batchctl.transports.archive import UnsafeArchive, safe_extract


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


BAD: dict[str, Callable[[], io.BytesIO]] = {
    "parent": lambda: archive(file("ok.txt"), file("../escape.txt")),
    "nested-parent": lambda: archive(file("a/../../escape.txt")),
    "absolute": lambda: archive(file("/tmp/escape.txt")),
    "symlink-absolute": lambda: archive(member("link", tarfile.SYMTYPE, "/etc/passwd")),
    "symlink-up": lambda: archive(member("sub/link", tarfile.SYMTYPE, "../../outside")),
    "hardlink-up": lambda: archive(member("hard", tarfile.LNKTYPE, "../outside")),
    "device": lambda: archive(member("dev", tarfile.CHRTYPE)),
    "fifo": lambda: archive(member("pipe", tarfile.FIFOTYPE)),
    "too-big": lambda: archive(file("big.bin", b"0" * 4096)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unsafe_archives_are_refused_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    destination = tmp_path / "dest" / "artifacts"
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(UnsafeArchive):
        safe_extract(BAD[case](), destination, max_bytes=1024)

    assert sorted(tmp_path.rglob("*")) == before


def test_a_safe_archive_is_extracted_with_inner_links(tmp_path: Path) -> None:
    stream = archive(
        member("./", tarfile.DIRTYPE),
        file("./report.xml", b"<ok/>"),
        file("./logs/a.log", b"line"),
        member("./latest.log", tarfile.SYMTYPE, "logs/a.log"),
    )
    names = safe_extract(stream, tmp_path / "out", max_bytes=1024)

    assert "./report.xml" in names
    assert (tmp_path / "out" / "report.xml").read_bytes() == b"<ok/>"
    assert (tmp_path / "out" / "latest.log").read_text() == "line"


def test_an_empty_stream_is_no_artifacts(tmp_path: Path) -> None:
    assert safe_extract(io.BytesIO(b""), tmp_path / "out", max_bytes=10) == []


def test_garbage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="not a valid tar"):
        safe_extract(io.BytesIO(b"this is not tar" * 100), tmp_path / "out", max_bytes=1 << 20)
