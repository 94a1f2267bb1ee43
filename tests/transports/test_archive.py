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
    "root-as-file": lambda: archive(file(".")),
    "through-a-file": lambda: archive(file("f"), file("f/x")),
    "file-over-link": lambda: archive(member("l", tarfile.SYMTYPE, "ok"), file("l")),
    "link-loop": lambda: archive(
        member("a", tarfile.SYMTYPE, "b"), member("b", tarfile.SYMTYPE, "a"), file("a/x")
    ),
    "dangling-link-as-directory": lambda: archive(
        member("l", tarfile.SYMTYPE, "missing"), file("l/x")
    ),
    # Harmless when declared, but the later member turns `l` into the parent.
    "link-redirected-later": lambda: archive(
        member("l", tarfile.SYMTYPE, "future/.."), member("future", tarfile.SYMTYPE, ".")
    ),
    # One entry on case-insensitive file systems, so `s2/..` would be the parent.
    "case-twin-of-a-link": lambda: archive(
        member("S2", tarfile.SYMTYPE, "."), member("s1", tarfile.SYMTYPE, "s2/..")
    ),
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


def snapshot(root: Path) -> dict[str, str | bytes]:
    """Every path under ``root`` with what it holds, links not followed."""
    seen: dict[str, str | bytes] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            seen[key] = f"-> {path.readlink()}"
        elif path.is_file():
            seen[key] = path.read_bytes()
        else:
            seen[key] = "directory"
    return seen


def assert_refused_leaving_nothing(stream: io.BytesIO, tmp_path: Path, match: str = "") -> None:
    """The destination sits two levels down so an escape still lands in ``tmp_path``."""
    destination = tmp_path / "dest" / "artifacts"
    before = snapshot(tmp_path)

    with pytest.raises(UnsafeArchive, match=match):
        safe_extract(stream, destination, max_bytes=1 << 20)

    assert snapshot(tmp_path) == before
    assert not destination.exists()


def test_chained_symlinks_cannot_carry_a_file_outside(tmp_path: Path) -> None:
    stream = archive(
        member("s2", tarfile.SYMTYPE, "."),
        member("s1", tarfile.SYMTYPE, "s2/.."),
        member("s3", tarfile.SYMTYPE, "s1/.."),
        file("s3/x", b"escaped"),
    )

    assert_refused_leaving_nothing(stream, tmp_path, match="'s1'.*leaves the artifacts")
    assert not (tmp_path / "x").exists()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file next to the destination that an archive must not reach."""
    path = tmp_path / "dest" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(b"secret")
    return path


@pytest.mark.parametrize("linkname", ["../secret.txt", "sub/../../secret.txt", "ABSOLUTE"])
def test_a_hardlink_out_of_the_destination_is_refused(
    linkname: str, secret: Path, tmp_path: Path
) -> None:
    linkname = str(secret) if linkname == "ABSOLUTE" else linkname
    # Extracted, `h` would share the secret's inode and the second `h` would overwrite it.
    stream = archive(
        file("ok.txt"), member("h", tarfile.LNKTYPE, linkname), file("h", b"overwritten")
    )

    assert_refused_leaving_nothing(stream, tmp_path, match="'h'")
    assert secret.read_bytes() == b"secret"


HARDLINKS_THROUGH_SYMLINKS: dict[str, Callable[[], io.BytesIO]] = {
    "up-through-link": lambda: archive(
        member("s2", tarfile.SYMTYPE, "."), member("h", tarfile.LNKTYPE, "s2/../secret.txt")
    ),
    "not-in-archive": lambda: archive(
        member("s2", tarfile.SYMTYPE, "."), member("h", tarfile.LNKTYPE, "s2/secret.txt")
    ),
    "inside-but-through-link": lambda: archive(
        member("real", tarfile.DIRTYPE),
        file("real/a"),
        member("alias", tarfile.SYMTYPE, "real"),
        member("h", tarfile.LNKTYPE, "alias/a"),
    ),
}


@pytest.mark.parametrize("case", sorted(HARDLINKS_THROUGH_SYMLINKS))
def test_a_hardlink_through_a_symlinked_directory_is_refused(
    case: str, secret: Path, tmp_path: Path
) -> None:
    assert_refused_leaving_nothing(HARDLINKS_THROUGH_SYMLINKS[case](), tmp_path, match="'h'")
    assert secret.read_bytes() == b"secret"


HARDLINKS_TO_NO_EARLIER_FILE: dict[str, Callable[[], io.BytesIO]] = {
    "missing": lambda: archive(member("h", tarfile.LNKTYPE, "nothing")),
    "later": lambda: archive(member("h", tarfile.LNKTYPE, "later.txt"), file("later.txt")),
    "directory": lambda: archive(member("d", tarfile.DIRTYPE), member("h", tarfile.LNKTYPE, "d")),
    "symlink": lambda: archive(
        file("ok.txt"), member("l", tarfile.SYMTYPE, "ok.txt"), member("h", tarfile.LNKTYPE, "l")
    ),
    "root": lambda: archive(member("h", tarfile.LNKTYPE, ".")),
}


@pytest.mark.parametrize("case", sorted(HARDLINKS_TO_NO_EARLIER_FILE))
def test_a_hardlink_must_name_a_regular_file_earlier_in_the_archive(
    case: str, tmp_path: Path
) -> None:
    assert_refused_leaving_nothing(HARDLINKS_TO_NO_EARLIER_FILE[case](), tmp_path, match="'h'")


def test_a_link_already_in_the_destination_is_followed_by_the_check(tmp_path: Path) -> None:
    destination = tmp_path / "dest" / "artifacts"
    destination.mkdir(parents=True)
    (destination / "here").symlink_to(".")
    before = snapshot(tmp_path)

    with pytest.raises(UnsafeArchive, match="leaves the artifacts"):
        safe_extract(archive(member("up", tarfile.SYMTYPE, "here/..")), destination, max_bytes=1024)

    assert snapshot(tmp_path) == before


def test_hardlinks_and_links_through_inner_links_are_extracted(tmp_path: Path) -> None:
    stream = archive(
        member("./", tarfile.DIRTYPE),
        file("./runs/3/a.log", b"line"),
        member("./runs/3/b.log", tarfile.LNKTYPE, "./runs/3/a.log"),
        member("./current", tarfile.SYMTYPE, "runs/3"),
        member("./latest.log", tarfile.SYMTYPE, "current/b.log"),
        file("./current/c.log", b"more"),
    )
    out = tmp_path / "out"

    safe_extract(stream, out, max_bytes=1024)

    assert (out / "runs/3/b.log").read_bytes() == b"line"
    assert (out / "latest.log").read_bytes() == b"line"
    assert (out / "runs/3/c.log").read_bytes() == b"more"
    assert (out / "current").readlink() == Path("runs/3")
