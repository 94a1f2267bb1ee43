"""Extracting archives pulled back from machines, safely.

A machine is not trusted with the controller's file system: members with
absolute paths or ``..``, links whose target leaves the destination, device
files and FIFOs are refused, and the total size is bounded. Everything is
checked before anything is written, so a refused archive leaves nothing.
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO


class UnsafeArchive(Exception):
    """The archive was refused; the message says which member and why."""


def _inside(name: str) -> str:
    """The member's normalised relative path, or raise if it leaves the root."""
    if name.startswith("/") or PurePosixPath(name).is_absolute() or "\\" in name:
        raise UnsafeArchive(f"{name!r}: absolute path")
    parts = PurePosixPath(name).parts
    if parts and ":" in parts[0]:
        raise UnsafeArchive(f"{name!r}: drive-qualified path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or ".." in PurePosixPath(name).parts:
        raise UnsafeArchive(f"{name!r}: path leaves the artifacts directory")
    return "" if normal == "." else normal


def check_members(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    total = 0
    for member in members:
        relative = _inside(member.name)
        if member.isdev() or member.isfifo():
            raise UnsafeArchive(f"{member.name!r}: device or FIFO")
        if member.issym() or member.islnk():
            target = member.linkname
            if target.startswith("/") or PurePosixPath(target).is_absolute():
                raise UnsafeArchive(f"{member.name!r}: link to absolute path {target!r}")
            base = posixpath.dirname(relative) if member.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchive(f"{member.name!r}: link leaves the artifacts directory")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchive(f"{member.name!r}: unsupported member type")
        total += max(member.size, 0)
        if total > max_bytes:
            raise UnsafeArchive(f"artifacts exceed the limit of {max_bytes} bytes")


def safe_extract(stream: IO[bytes], destination: Path, *, max_bytes: int) -> list[str]:
    """Extract a tar stream into ``destination``; returns the member names.

    The stream is spooled to a temporary file first (bounded by ``max_bytes``
    plus headers) so every member can be checked before anything is written.
    """
    import tempfile

    with tempfile.TemporaryFile() as spool:
        copied = 0
        limit = max_bytes + (1 << 20) + max_bytes // 8  # room for tar headers and padding
        while chunk := stream.read(1 << 16):
            copied += len(chunk)
            if copied > limit:
                raise UnsafeArchive(f"artifacts exceed the limit of {max_bytes} bytes")
            spool.write(chunk)
        if copied == 0:
            return []
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r:") as archive:
                members = archive.getmembers()
                check_members(members, max_bytes)
                destination.mkdir(parents=True, exist_ok=True)
                for member in members:
                    relative = _inside(member.name)
                    if not relative:
                        continue
                    target = destination / relative
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    elif member.issym():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.symlink_to(member.linkname)
                    elif member.islnk():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(destination / _inside(member.linkname), target)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = archive.extractfile(member)
                        assert source is not None
                        with open(target, "wb") as out:
                            shutil.copyfileobj(source, out)
                        target.chmod(0o644 | (member.mode & 0o111))
        except tarfile.TarError as exc:
            raise UnsafeArchive(f"not a valid tar archive: {exc}") from None
    return [member.name for member in members]
