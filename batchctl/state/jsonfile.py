"""One JSON state file: bounded file lock, fresh read, atomic replace.

Every change is lock -> read fresh -> apply -> temp file in the same directory
-> fsync -> ``os.replace`` -> fsync the directory. A reader never sees a
half-written file, and a crash at any instant leaves the old or the new file.

A file that does not parse, or that a newer batchctl wrote, is refused and
never overwritten. Before each replace the previous (known good, since it was
just parsed) version is hard-linked to ``<name>.last-good``: no copy is made,
so keeping it costs nothing even for a large file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import orjson
from filelock import FileLock

from batchctl.model.errors import StateTooNew, StateUnreadable
from batchctl.state.journal import (
    DEFAULT_LOCK_TIMEOUT_S,
    FILE_MODE,
    Document,
    ensure_state_dir,
    fsync_dir,
    take_lock,
    write_error,
)
from batchctl.state.memory import without_gc

T = TypeVar("T")


class JsonStateFile:
    def __init__(
        self,
        path: Path,
        *,
        schema_version: int,
        collection: str,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.last_good_path = path.with_name(path.name + ".last-good")
        self.schema_version = schema_version
        self.collection = collection
        self.lock_timeout = lock_timeout

    def empty(self) -> Document:
        return {"schema_version": self.schema_version, self.collection: {}}

    def read(self) -> Document:
        """The current content; safe without the lock thanks to atomic replace."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.empty()
        try:
            with without_gc():
                document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._unreadable(f"is not valid JSON ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get(self.collection), dict):
            raise self._unreadable(f"does not hold a {self.collection!r} object")
        version = document.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise self._unreadable("has no integer schema_version")
        if version > self.schema_version:
            raise StateTooNew(
                f"{self.path} was written by a newer batchctl (schema_version {version}, "
                f"this one reads up to {self.schema_version}); upgrade batchctl. "
                "The file was left untouched.",
                details={"file": str(self.path), "schema_version": version},
            )
        return document

    def _unreadable(self, why: str) -> StateUnreadable:
        hint = (
            f"; the last good copy is {self.last_good_path}" if self.last_good_path.exists() else ""
        )
        return StateUnreadable(
            f"{self.path} {why}. It was left untouched{hint}.",
            details={"file": str(self.path), "last_good": str(self.last_good_path)},
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        ensure_state_dir(self.path.parent)
        lock = FileLock(self.lock_path, timeout=self.lock_timeout, mode=FILE_MODE)
        take_lock(lock, self.lock_path, self.lock_timeout)
        try:
            yield
        finally:
            lock.release()

    def update(self, change: Callable[[Document], tuple[Document | None, T]]) -> T:
        """Apply ``change`` to freshly read content under the lock.

        ``change`` returns (new document or None for "no write", result).
        """
        with self.locked():
            current = self.read()
            new_document, result = change(current)
            if new_document is not None:
                self._write(new_document)
            return result

    def _write(self, document: Document) -> None:
        document["schema_version"] = self.schema_version
        payload = orjson.dumps(document)
        try:
            fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as exc:  # a full disk, a read-only state dir: exit 4, not a crash
            raise write_error(self.path, exc) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            if self.path.exists():
                self._keep_last_good()
            os.replace(temp_name, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                Path(temp_name).unlink()
            raise write_error(self.path, exc) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                Path(temp_name).unlink()
            raise

    def _keep_last_good(self) -> None:
        staging = self.last_good_path.with_name(self.last_good_path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        os.link(self.path, staging)
        os.replace(staging, self.last_good_path)


class ParsedWhileUnchanged(Generic[T]):
    """A state file's content as ``parse`` makes it, read and parsed again
    only when the file changed: one ``stat`` otherwise. Every write renames a
    new inode into place, so the file's identity (device, inode, size,
    mtime) changes with each; a missing file is ``empty()``. The same
    object is returned while the file is unchanged."""

    def __init__(
        self, file: JsonStateFile, parse: Callable[[Document], T], empty: Callable[[], T]
    ) -> None:
        self.file = file
        self.parse = parse
        self.empty = empty
        self._seen: tuple[int, int, int, int] | None = None
        self._value: T = empty()

    def get(self) -> T:
        try:
            stat = self.file.path.stat()
        except FileNotFoundError:
            self._seen, self._value = None, self.empty()
            return self._value
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity != self._seen:
            # Identity taken before the read: a write between the two makes
            # the next call read again, never keeps a stale answer.
            self._value = self.parse(self.file.read())
            self._seen = identity
        return self._value
