"""Content-addressed snapshots of test directories.

``batchctl run`` snapshots every entry's directory here, and the batch runs
its snapshot, wherever the workspace goes afterwards (deleted, moved, edited).

Layout under ``<state-dir>/snapshots/``:

- ``objects/<aa>/<sha256>``: one file's bytes, stored once whatever the number
  of directories, batches or paths that hold it (mode 0600: a file's own mode
  is in the tree);
- ``trees/<sha256>.json``: a directory's manifest, the sha256 of its own
  bytes: every member's relative path, kind and mode, a file's digest and
  size, a symlink's target. Two directories with the same content have the
  same tree, wherever they are.

Only regular files, directories and symlinks that stay inside the directory
are taken. A device, FIFO or socket, a symlink that leaves the directory
(absolute, or climbing out with ``..``), or an unreadable file is refused
with a line naming it: the snapshot would not be the directory.

Objects and trees are written by temp file, fsync and rename, before the
batch that names them is recorded, so a recorded batch never names a
snapshot that is not whole on disk. ``collect`` (run by ``prune``) removes
trees no batch names and then objects no kept tree names, sparing anything
written in the last ``COLLECT_GRACE_S`` (a ``run`` may have written its
snapshot and not yet its batch; reusing an object refreshes its time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchctl.state.journal import DIR_MODE, FILE_MODE, ensure_state_dir

CHUNK = 1 << 20
TREE_FORMAT = 1
COLLECT_GRACE_S = 3600.0


class SnapshotRefused(Exception):
    """The directory cannot be snapshotted; ``problems`` are one line each,
    relative to the directory."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Member:
    path: str  # relative, '/'-separated
    kind: str  # "d", "f" or "l"
    mode: int = 0
    digest: str = ""  # a file's sha256
    size: int = 0
    target: str = ""  # a symlink's

    def as_list(self) -> list[Any]:
        if self.kind == "f":
            return [self.path, "f", self.mode, self.digest, self.size]
        if self.kind == "l":
            return [self.path, "l", self.target]
        return [self.path, "d", self.mode]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Member:
        if raw[1] == "f":
            return cls(raw[0], "f", mode=raw[2], digest=raw[3], size=raw[4])
        if raw[1] == "l":
            return cls(raw[0], "l", target=raw[2])
        return cls(raw[0], "d", mode=raw[2])


def _leaves(root: Path, link: Path, target: str) -> bool:
    """Does the symlink ``link`` (inside ``root``, pointing to ``target``)
    lead outside ``root``? Absolute targets always do (the copy would point
    back into the workspace); relative ones are resolved as the file system
    resolves them, so a chain of links (``s2 -> .``, ``s1 -> s2/..``) is
    judged by where it really ends."""
    if target.startswith("/"):
        return True
    resolved = link.resolve()
    return resolved != root and root not in resolved.parents


class SnapshotStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "snapshots"
        self.objects = self.root / "objects"
        self.trees = self.root / "trees"

    # -- taking ----------------------------------------------------------------

    def take(self, directory: Path, *, store: bool = True) -> str:
        """The tree digest of ``directory``; with ``store`` its files and
        manifest are kept here. O(bytes of the directory) to hash; a file
        already stored is not written again."""
        members = list(self._walk(directory))
        if store:
            self._ensure_dirs()
            touched: set[Path] = set()
            for member in members:
                if member.kind == "f":
                    self._store_object(directory / member.path, member.digest, touched)
        manifest = orjson.dumps(
            {"format": TREE_FORMAT, "members": [member.as_list() for member in members]}
        )
        digest = hashlib.sha256(manifest).hexdigest()
        if store:
            tree = self.trees / f"{digest}.json"
            if tree.exists():
                _touch(tree)
            else:
                _write_whole(tree, manifest)
                touched.add(self.trees)
            for directory_written in touched:
                _fsync_dir(directory_written)
        return digest

    def _walk(self, directory: Path) -> Iterator[Member]:
        root = directory.resolve()
        problems: list[str] = []
        members: list[Member] = []
        pending = [""]
        while pending:
            relative_dir = pending.pop()
            try:
                with os.scandir(root / relative_dir if relative_dir else root) as found:
                    entries = sorted(found, key=lambda entry: entry.name)
            except OSError as exc:
                problems.append(f"{relative_dir or '.'}: cannot list: {exc.strerror}")
                continue
            for entry in entries:
                relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    problems.append(f"{relative}: cannot read: {exc.strerror}")
                    continue
                if stat.S_ISLNK(info.st_mode):
                    target = str(Path(entry.path).readlink())
                    if _leaves(root, Path(entry.path), target):
                        problems.append(
                            f"{relative}: a symlink to {target!r}, outside the test directory "
                            "(copy what it points to into the directory)"
                        )
                    else:
                        members.append(Member(relative, "l", target=target))
                elif stat.S_ISDIR(info.st_mode):
                    members.append(Member(relative, "d", mode=stat.S_IMODE(info.st_mode)))
                    pending.append(relative)
                elif stat.S_ISREG(info.st_mode):
                    try:
                        digest = _file_digest(Path(entry.path))
                    except OSError as exc:
                        problems.append(f"{relative}: cannot read: {exc.strerror}")
                        continue
                    members.append(
                        Member(
                            relative,
                            "f",
                            mode=stat.S_IMODE(info.st_mode),
                            digest=digest,
                            size=info.st_size,
                        )
                    )
                else:
                    problems.append(
                        f"{relative}: a {_kind_name(info.st_mode)}; a test directory may hold "
                        "files, directories and symlinks only"
                    )
        if problems:
            raise SnapshotRefused(problems)
        yield from sorted(members, key=lambda member: member.path)

    def _ensure_dirs(self) -> None:
        ensure_state_dir(self.root.parent)
        for path in (self.root, self.objects, self.trees):
            path.mkdir(mode=DIR_MODE, exist_ok=True)

    def _object(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def _store_object(self, source: Path, digest: str, touched: set[Path]) -> None:
        target = self._object(digest)
        if target.exists():
            _touch(target)
            return
        target.parent.mkdir(mode=DIR_MODE, exist_ok=True)
        temporary = target.with_name(f".{digest}.{os.getpid()}.tmp")
        try:
            with open(source, "rb") as reading, _private_file(temporary) as writing:
                inner = hashlib.sha256()
                while chunk := reading.read(CHUNK):
                    inner.update(chunk)
                    writing.write(chunk)
                writing.flush()
                os.fsync(writing.fileno())
            if inner.hexdigest() != digest:
                raise SnapshotRefused([f"{source.name}: changed while it was being snapshotted"])
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        touched.add(target.parent)

    # -- reading ---------------------------------------------------------------

    def members(self, digest: str) -> list[Member]:
        raw = orjson.loads((self.trees / f"{digest}.json").read_bytes())
        return [Member.from_list(item) for item in raw["members"]]

    def has_file(self, digest: str, name: str) -> bool:
        """Whether the snapshot holds a regular file at the top named ``name``."""
        return any(m.path == name and m.kind == "f" for m in self.members(digest))

    def materialize(self, digest: str, destination: Path) -> None:
        """Write the snapshot's tree at ``destination`` (which must not exist),
        each file with its recorded mode. O(bytes of the snapshot)."""
        destination.mkdir(mode=DIR_MODE)
        directories: list[tuple[Path, int]] = []
        for member in self.members(digest):
            path = destination / member.path
            if member.kind == "d":
                path.mkdir(mode=DIR_MODE)
                directories.append((path, member.mode))
            elif member.kind == "l":
                path.symlink_to(member.target)
            else:
                shutil.copyfile(self._object(member.digest), path)  # sendfile on Linux
                path.chmod(member.mode)
        # Directory modes last: a read-only directory is filled first.
        for path, mode in reversed(directories):
            path.chmod(mode)

    # -- collecting ------------------------------------------------------------

    def collect(self, kept: Iterable[str], *, now: float) -> tuple[int, int]:
        """Remove trees not in ``kept`` and objects no kept tree names, except
        those written or reused in the last COLLECT_GRACE_S. Returns (trees,
        objects) removed. O(stored trees and objects)."""
        if not self.root.is_dir():
            return (0, 0)
        moment = now
        kept_trees = set(kept)
        removed_trees = 0
        live_objects: set[str] = set()
        for tree in self.trees.glob("*.json"):
            digest = tree.stem
            if digest in kept_trees or _recent(tree, moment):
                with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError):
                    live_objects.update(m.digest for m in self.members(digest) if m.kind == "f")
                continue
            tree.unlink(missing_ok=True)
            removed_trees += 1
        removed_objects = 0
        for bucket in self.objects.iterdir() if self.objects.is_dir() else ():
            for stored in bucket.iterdir():
                if stored.name in live_objects or _recent(stored, moment):
                    continue
                stored.unlink(missing_ok=True)
                removed_objects += 1
        return (removed_trees, removed_objects)


def _file_digest(path: Path) -> str:
    inner = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            inner.update(chunk)
    return inner.hexdigest()


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[Any]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open(descriptor, "wb") as handle:
        yield handle


def _write_whole(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _private_file(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _recent(path: Path, moment: float) -> bool:
    try:
        return moment - path.stat().st_mtime < COLLECT_GRACE_S
    except OSError:
        return True  # gone already, or unreadable: leave it


def _kind_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
