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
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from batchctl.state.journal import DIR_MODE, ensure_state_dir

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


def _leaves(root: Path, link: Path, relative: str, target: str) -> bool:
    """Does the symlink at ``relative`` (inside ``root``, pointing to
    ``target``) lead outside ``root``, or pass outside on its way? Absolute
    targets always do (the copy would point back into the workspace). A
    relative one must stay inside at every step of its own path (``../d/x``
    from inside ``d`` climbs out of the copy, which is not named ``d``),
    and where the file system resolves it (a chain of links, ``s2 -> .``,
    ``s1 -> s2/..``, is judged by where it really ends). A loop leaves."""
    if target.startswith("/"):
        return True
    depth = 0
    for part in [*PurePosixPath(relative).parent.parts, *PurePosixPath(target).parts]:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    try:
        resolved = link.resolve()
    except (OSError, RuntimeError):  # a loop: RuntimeError before Python 3.13
        return True
    return resolved != root and root not in resolved.parents


def _link(root: Path, link: Path, relative: str) -> tuple[str | None, Member | None]:
    """A symlink as a member, or the problem that keeps it out."""
    target = str(link.readlink())
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return f"{relative}: a symlink whose target is not UTF-8 text", None
    if _leaves(root, link, relative, target):
        return (
            f"{relative}: a symlink to {target!r}, outside the test directory "
            "(copy what it points to into the directory)",
            None,
        )
    return None, Member(relative, "l", target=target)


@dataclass(frozen=True)
class Scan:
    """A directory walked and hashed, not yet stored."""

    directory: Path
    members: list[Member]
    manifest: bytes
    digest: str


# Version-control metadata is not part of a test: it differs between two
# checkouts of one commit (packs, index times), and a snapshot that held it
# would never let a re-run from a fresh checkout resume.
SKIPPED_NAMES = frozenset({".git", ".hg", ".svn"})


class SnapshotStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "snapshots"
        self.objects = self.root / "objects"
        self.trees = self.root / "trees"

    # -- taking ----------------------------------------------------------------

    def take(self, directory: Path, *, store: bool = True) -> str:
        """The tree digest of ``directory``, stored with ``store``."""
        scanned = self.scan(directory)
        if store:
            self.store(scanned)
        return scanned.digest

    def scan(self, directory: Path) -> Scan:
        """Walk and hash ``directory`` (O(its bytes)); SnapshotRefused with
        every problem at once if it holds what a snapshot cannot."""
        members = self._walk(directory)
        manifest = orjson.dumps(
            {"format": TREE_FORMAT, "members": [member.as_list() for member in members]}
        )
        return Scan(directory, members, manifest, hashlib.sha256(manifest).hexdigest())

    def store(self, scanned: Scan) -> None:
        """Keep a scanned directory's files not stored yet, then its tree;
        everything synced (directories too) before this returns, so a batch
        recorded next never names a snapshot that is not whole on disk."""
        touched = self._ensure_dirs()
        for member in scanned.members:
            if member.kind == "f":
                self._store_object(scanned.directory, member, touched)
        tree = self.trees / f"{scanned.digest}.json"
        if tree.exists():
            _touch(tree)
        else:
            _write_whole(tree, scanned.manifest)
            touched.add(self.trees)
        # Children before parents: a directory made here is synced into its
        # parent after what it holds.
        for directory in sorted(touched, key=lambda path: len(path.parts), reverse=True):
            _fsync_dir(directory)

    def present(self, digest: str) -> bool:
        """Whether the tree and every object it names are stored. O(files)."""
        try:
            return all(
                self._object(member.digest).exists()
                for member in self.members(digest)
                if member.kind == "f"
            )
        except (OSError, ValueError):
            return False

    def _walk(self, directory: Path) -> list[Member]:
        root = directory.resolve()
        state = self.root.parent
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
                if entry.name in SKIPPED_NAMES:
                    continue
                try:
                    relative.encode("utf-8")
                except UnicodeEncodeError:
                    problems.append(
                        f"{relative.encode('utf-8', 'backslashreplace').decode()}: "
                        "its name is not UTF-8 text"
                    )
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    problems.append(f"{relative}: cannot read: {exc.strerror}")
                    continue
                if stat.S_ISLNK(info.st_mode):
                    problem, member = _link(root, Path(entry.path), relative)
                    if problem:
                        problems.append(problem)
                    elif member is not None:
                        members.append(member)
                elif stat.S_ISDIR(info.st_mode):
                    if Path(entry.path).resolve() == state.resolve():
                        continue  # the state directory itself, kept inside the workspace
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
        return sorted(members, key=lambda member: member.path)

    def _ensure_dirs(self) -> set[Path]:
        """Make the store's directories; those made here are returned as
        parents to sync."""
        made: set[Path] = set()
        if not self.root.parent.is_dir():
            ensure_state_dir(self.root.parent)
            made.add(self.root.parent.parent)
        for path in (self.root, self.objects, self.trees):
            if not path.is_dir():
                path.mkdir(mode=DIR_MODE, exist_ok=True)
                made.add(path.parent)
        return made

    def _object(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def _store_object(self, directory: Path, member: Member, touched: set[Path]) -> None:
        target = self._object(member.digest)
        if target.exists():
            _touch(target)
            return
        if not target.parent.is_dir():
            target.parent.mkdir(mode=DIR_MODE, exist_ok=True)
            touched.add(self.objects)
        descriptor, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        temporary = Path(temporary_name)
        try:
            with open(directory / member.path, "rb") as reading, open(descriptor, "wb") as writing:
                inner = hashlib.sha256()
                while chunk := reading.read(CHUNK):
                    inner.update(chunk)
                    writing.write(chunk)
                writing.flush()
                os.fsync(writing.fileno())
            if inner.hexdigest() != member.digest:
                raise SnapshotRefused([f"{member.path}: changed while it was being snapshotted"])
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        touched.add(target.parent)

    # -- reading ---------------------------------------------------------------

    def members(self, digest: str) -> list[Member]:
        raw = orjson.loads((self.trees / f"{digest}.json").read_bytes())
        return [Member.from_list(item) for item in raw["members"]]

    def has_file(self, digest: str, name: str) -> bool:
        """Whether ``name`` in the snapshot is a regular file, or a symlink
        that leads to one inside it (as ``run.sh -> ci/run.sh``): what
        ``is_file`` says of the copy. False for a tree that cannot be read."""
        try:
            by_path = {member.path: member for member in self.members(digest)}
        except (OSError, ValueError, KeyError):
            return False
        path = name
        for _ in range(40):  # the kernel's own bound on links followed
            member = by_path.get(path)
            if member is None or member.kind == "d":
                return False
            if member.kind == "f":
                return True
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.target))
        return False

    def materialize_whole(self, digest: str, run_dir: Path) -> Path:
        """``run_dir/work``, the snapshot's copy for a run, put in place whole:
        written as ``work.partial`` and renamed, so a copy cut short by a
        crash is made again, never run half-made. Kept if already there."""
        work = run_dir / "work"
        if work.is_dir():
            return work
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / "work.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self.materialize(digest, partial)
        partial.rename(work)
        return work

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
        unreadable = False
        for tree in self.trees.glob("*.json") if self.trees.is_dir() else ():
            digest = tree.stem
            if digest in kept_trees or _recent(tree, moment):
                try:
                    live_objects.update(m.digest for m in self.members(digest) if m.kind == "f")
                except (OSError, ValueError, KeyError):
                    # What it names is unknown: no object may go this time.
                    unreadable = True
                continue
            tree.unlink(missing_ok=True)
            removed_trees += 1
        for leftover in self.trees.glob(".*.tmp") if self.trees.is_dir() else ():
            if not _recent(leftover, moment):
                leftover.unlink(missing_ok=True)
        removed_objects = 0
        if unreadable:
            raise OSError(f"a kept tree under {self.trees} cannot be read; no object removed")
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


def _write_whole(path: Path, data: bytes) -> None:
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    temporary = Path(temporary_name)
    try:
        with open(descriptor, "wb") as handle:
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
