"""Extracting archives pulled back from machines, safely.

A machine is not trusted with the controller's file system: members with
absolute paths or ``..``, links whose target leaves the destination, device
files and FIFOs are refused, and the total size is bounded. Everything is
checked before anything is written, so a refused archive leaves nothing.

Checking each link on its own is not enough: ``s2 -> .`` then ``s1 -> s2/..``
each look harmless, yet together ``s1`` is the destination's parent. So the
check replays the whole archive on a model of the destination and resolves
every path the way the kernel will once the earlier members exist.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import tempfile
import unicodedata
from pathlib import Path, PurePosixPath
from typing import IO

# The kernel gives up after this many links in one lookup; a longer chain
# would fail halfway through extraction instead of up front.
_MAX_LINK_HOPS = 40
# Longer names fail with ENAMETOOLONG halfway through extraction; bounding
# them also bounds the work of resolving link chains.
_MAX_PATH_BYTES = 4095
_MAX_NAME_BYTES = 255

_DIR = "directory"
_FILE = "file"
_LINK = "symlink"
_OTHER = "entry"


class UnsafeArchive(Exception):
    """The archive was refused; the message says which member and why."""


class _Refused(Exception):
    """Why a member is refused; the caller names the member."""


def _check_length(name: str) -> None:
    # A NUL or an overlong name is not an escape, but the system calls would
    # reject it halfway through extraction, after earlier members were written.
    encoded = os.fsencode(name)
    if b"\0" in encoded:
        raise _Refused("NUL in name")
    if len(encoded) > _MAX_PATH_BYTES or any(
        len(part) > _MAX_NAME_BYTES for part in encoded.split(b"/")
    ):
        raise _Refused("name too long")


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
    try:
        _check_length(name)
    except _Refused as exc:
        raise UnsafeArchive(f"{name!r}: {exc}") from None
    return "" if normal == "." else normal


def _link_parts(target: str) -> list[str]:
    """A symbolic link's target as path components, ``..`` kept."""
    if not target:
        raise _Refused("link with an empty target")
    if target.startswith("/") or PurePosixPath(target).is_absolute() or "\\" in target:
        raise _Refused(f"link to absolute path {target!r}")
    parts = target.split("/")
    if ":" in parts[0]:
        raise _Refused(f"link to drive-qualified path {target!r}")
    _check_length(target)
    return parts


def _fold(path: str) -> str:
    # Case-insensitive file systems (macOS, Windows) treat "S2" and "s2" as
    # one entry, so a link must not be reachable under another spelling.
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


class _Tree:
    """The destination as it will be once the members seen so far are out.

    Entries are keyed by their resolved path, so no key has a link above it.
    What the archive does not declare is read from the destination on disk.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.entries: dict[str, tuple[str, str]] = {"": (_DIR, "")}
        self.folded: dict[str, str] = {_fold(""): ""}

    def lookup(self, path: str) -> tuple[str, str] | None:
        entry = self.entries.get(path)
        if entry is not None:
            return entry
        twin = self.folded.get(_fold(path))
        if twin is not None and self.entries[twin][0] == _LINK:
            raise _Refused(f"{path!r} and the link {twin!r} differ only in case")
        if self.root is None:
            return None
        on_disk = self.root / path
        try:
            mode = on_disk.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return (_LINK, str(on_disk.readlink()))
        return (_DIR, "") if stat.S_ISDIR(mode) else (_OTHER, "")

    def add(self, path: str, entry: tuple[str, str]) -> None:
        folded = _fold(path)
        twin = self.folded.get(folded)
        if twin is not None and _LINK in (entry[0], self.entries[twin][0]):
            raise _Refused(f"{path!r} and {twin!r} differ only in case")
        self.entries[path] = entry
        self.folded.setdefault(folded, path)

    def resolve(self, parts: list[str], *, creating: bool) -> str:
        """Where ``parts`` (relative to the root) lands, following every link.

        ``creating``: the path is a directory tarfile will ``makedirs``, so
        missing components become directories, but a link on the way must
        lead to an existing directory (``mkdir`` on a dangling link fails).
        Otherwise missing components are taken literally, as ``realpath``
        does, which is safe because links are checked again at the end.
        """
        # None marks the end of a followed link's target.
        pending: list[str | None] = list(reversed(parts))
        current: list[str] = []
        hops = 0
        in_links = 0
        while pending:
            part = pending.pop()
            if part is None:
                in_links -= 1
                continue
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise _Refused("leaves the artifacts directory")
                current.pop()
                continue
            candidate = "/".join([*current, part])
            entry = self.lookup(candidate)
            if entry is not None and entry[0] == _LINK:
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise _Refused("too many levels of symbolic links")
                # Only a link already on disk can be absolute; the archive's are refused.
                if entry[1].startswith("/"):
                    raise _Refused(f"goes through {candidate!r}, outside the artifacts directory")
                in_links += 1
                pending.append(None)
                pending.extend(reversed(_link_parts(entry[1])))
                continue
            last = all(item is None for item in pending)
            if entry is not None and entry[0] != _DIR and (creating or not last):
                raise _Refused(f"goes through {candidate!r}, which is not a directory")
            if entry is None and creating:
                if in_links:
                    raise _Refused(f"goes through a link to {candidate!r}, which does not exist")
                self.add(candidate, (_DIR, ""))
            current.append(part)
        return "/".join(current)

    def place(self, member: tarfile.TarInfo, relative: str) -> None:
        """Record ``member`` at ``relative``, refusing what would leave the root."""
        if not relative:
            if member.isdir():
                return
            raise _Refused("replaces the artifacts directory itself")
        *parents, name = relative.split("/")
        parent = self.resolve(parents, creating=True)
        path = f"{parent}/{name}" if parent else name
        existing = self.lookup(path)
        if existing is not None:
            # Anything but a directory over a directory would be followed or
            # replaced on disk, which the model here does not try to predict.
            if existing[0] == _DIR and member.isdir():
                return
            raise _Refused(f"would replace the existing {existing[0]} {path!r}")
        if member.issym():
            target = _link_parts(member.linkname)
            try:
                self.resolve([*parent.split("/"), *target], creating=False)
            except _Refused as exc:
                raise _Refused(f"link to {member.linkname!r} {exc}") from None
            self.add(path, (_LINK, member.linkname))
        elif member.islnk():
            # Hard link names are relative to the archive root. Only a regular
            # file this archive already wrote, named without any link on the
            # way, is accepted: a hard link shares the inode, so a later write
            # through it would change whatever it points at.
            original = member.linkname
            if original.startswith("/") or PurePosixPath(original).is_absolute():
                raise _Refused(f"link to absolute path {original!r}")
            normal = posixpath.normpath(original)
            if ".." in PurePosixPath(original).parts or normal.startswith("../"):
                raise _Refused("link leaves the artifacts directory")
            if self.entries.get(normal) != (_FILE, ""):
                raise _Refused(
                    f"hard link to {original!r}, not a regular file earlier in the archive"
                )
            self.add(path, (_FILE, ""))
        else:
            self.add(path, (_DIR, "") if member.isdir() else (_FILE, ""))

    def check_links(self) -> None:
        """Every link, against the finished tree: a later member can redirect
        a path an earlier link went through."""
        for path, (kind, target) in list(self.entries.items()):
            if kind != _LINK:
                continue
            parts = [*posixpath.dirname(path).split("/"), *_link_parts(target)]
            try:
                self.resolve(parts, creating=False)
            except _Refused as exc:
                raise UnsafeArchive(f"{path!r}: link to {target!r} {exc}") from None


def check_members(
    members: list[tarfile.TarInfo], max_bytes: int, *, destination: Path | None = None
) -> None:
    """Raise ``UnsafeArchive`` unless every member stays inside ``destination``.

    Without ``destination`` the members are checked as if it were empty.
    """
    tree = _Tree(destination)
    total = 0
    for member in members:
        relative = _inside(member.name)
        if member.isdev() or member.isfifo():
            raise UnsafeArchive(f"{member.name!r}: device or FIFO")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchive(f"{member.name!r}: unsupported member type")
        total += max(member.size, 0)
        if total > max_bytes:
            raise UnsafeArchive(f"artifacts exceed the limit of {max_bytes} bytes")
        try:
            tree.place(member, relative)
        except _Refused as exc:
            raise UnsafeArchive(f"{member.name!r}: {exc}") from None
    tree.check_links()


def safe_extract(stream: IO[bytes], destination: Path, *, max_bytes: int) -> list[str]:
    """Extract a tar stream into ``destination``; returns the member names.

    The stream is spooled to a temporary file first (bounded by ``max_bytes``
    plus headers) so every member can be checked before anything is written.
    """
    # Callers report an UnsafeArchive as a failed collect; anything else would
    # take the whole executor down.
    if not hasattr(tarfile, "data_filter"):
        raise UnsafeArchive("extracting safely needs Python 3.11.4 or later (tarfile filters)")
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
            # errorlevel 2: a member tarfile cannot extract stops the extraction
            # instead of being skipped with only a debug message.
            with tarfile.open(fileobj=spool, mode="r:", errorlevel=2) as archive:
                members = archive.getmembers()
                check_members(members, max_bytes, destination=destination)
                destination.mkdir(parents=True, exist_ok=True)
                # The "data" filter repeats the path checks against the real
                # file system as a second line, and drops ownership, setuid
                # and group/other write bits.
                archive.extractall(
                    destination,
                    members=[member for member in members if _inside(member.name)],
                    filter="data",
                )
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"{exc.tarinfo.name!r}: {exc}") from None
        except tarfile.ExtractError as exc:
            raise UnsafeArchive(f"cannot extract: {exc}") from None
        except tarfile.TarError as exc:
            raise UnsafeArchive(f"not a valid tar archive: {exc}") from None
    return [member.name for member in members]
