"""A state file as a compacted snapshot plus an append-only journal.

``<name>.json`` is the snapshot, ``<name>.journal`` the records appended since
it was written. Both carry a *generation*: the journal of generation g holds
exactly the records that came after snapshot g. A reader takes no lock: it
reads the snapshot, then folds the journal of the same generation line by
line. A writer holds the file lock, folds whatever other writers appended
since its last look (so its decisions rest on fresh data), appends its own
records in one ``write`` and fsyncs. Writing a change therefore costs the
bytes of the change, not of the file.

Compaction (under the lock, once the journal outgrows the snapshot by
``COMPACT_RATIO``, or at once when a writer removes records so the file
shrinks) writes snapshot g+1 by temp file, fsync and ``os.replace``, then
replaces the journal by an empty one of generation g+1. A crash between
the two leaves journal g beside snapshot g+1: its records are already in the
snapshot, and readers ignore a journal older than the snapshot. Because the
journal grows to a multiple of the snapshot before it is folded in, the bytes
written by compaction stay proportional to the bytes appended.

A process keeps what it read (the folded document, the generation and the
journal offset), so a later read costs only the records appended since; a
long-lived worker holds a 100,000-item batch this way and reads only what
changed.

A record is one JSON object per line. A line without its newline is the
remainder of a writer killed mid-append: readers stop before it, and the
next writer cuts it off under the lock before appending.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchctl.model.errors import LockTimeout, StateError, StateTooNew, StateUnreadable
from batchctl.state.memory import without_gc

if TYPE_CHECKING:
    # Imported where a lock is taken: a read (``status``) takes none, and
    # filelock costs as much to import as the whole read of a small batch.
    from filelock import FileLock

DEFAULT_LOCK_TIMEOUT_S = 30.0
FILE_MODE = 0o600
DIR_MODE = 0o700
# The journal is folded into a new snapshot once it is this many times the
# snapshot's size (and at least COMPACT_MIN_BYTES): amortised, compaction
# writes at most 1/COMPACT_RATIO of the bytes appended.
COMPACT_RATIO = 2.0
COMPACT_MIN_BYTES = 4 << 20
# When a batch ends its journal is folded early, once it is as large as the
# snapshot (and TIDY_MIN_BYTES): readers of the finished batch then parse one
# snapshot instead of folding records. Amortised, that compaction writes at
# most 1/TIDY_RATIO bytes per byte appended.
TIDY_RATIO = 1.0
TIDY_MIN_BYTES = 1 << 20
_READ_RETRIES = 20

Document = dict[str, Any]
Record = dict[str, Any]
Fold = Callable[[Document, Record], None]


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory 0700 (and tighten it if we just made it)."""
    if not path.is_dir():
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            path.chmod(DIR_MODE)
        except OSError as exc:
            raise StateError(
                f"cannot create the state directory {path}: {exc.strerror}",
                details={"state_dir": str(path)},
            ) from None
    return path


def take_lock(lock: FileLock, lock_path: Path, timeout: float) -> None:
    """Acquire a state file's lock, or say clearly which lock and why not."""
    from filelock import Timeout

    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(
            f"timed out after {timeout:g}s waiting for the lock {lock_path} "
            "(another batchctl holds it; raise BATCHCTL_LOCK_TIMEOUT to wait longer)",
            details={"lock": str(lock_path), "timeout_s": timeout},
        ) from None
    except OSError as exc:
        raise StateError(
            f"cannot take the lock {lock_path}: {exc.strerror}",
            details={"lock": str(lock_path)},
        ) from None


class JournaledFile:
    """One state file (snapshot + journal) and this process's view of it.

    ``fold(document, record)`` applies one record to the document in place;
    it must be deterministic, so every process folding the same records gets
    the same document.
    """

    def __init__(
        self,
        path: Path,
        *,
        schema_version: int,
        collection: str,
        fold: Fold,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        compact_min_bytes: int = COMPACT_MIN_BYTES,
        on_load: Callable[[Document], None] | None = None,
    ) -> None:
        self.path = path
        self.journal_path = path.with_suffix(".journal")
        self.lock_path = path.with_name(path.name + ".lock")
        self.last_good_path = path.with_name(path.name + ".last-good")
        self.schema_version = schema_version
        self.collection = collection
        self.fold = fold
        # Rebuilds whatever the caller derives from the document (indexes)
        # after a whole snapshot was read; ``fold`` keeps it current after.
        self.on_load = on_load
        self.lock_timeout = lock_timeout
        self.compact_min_bytes = compact_min_bytes
        self._document: Document | None = None
        self._generation = 0
        self._offset = 0  # bytes of the journal folded so far (0: no journal yet)
        # The journal as it was when everything in it had been folded:
        # unchanged since, a refresh has nothing to read (one stat).
        self._folded_all_of: tuple[int, int, int, int] | None = None
        self._snapshot_bytes = 0
        self._locked = False
        self._swept = False
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        # A worker renews its lease from a second thread; the cached document
        # and the journal offset are shared, so one thread at a time.
        self._mutex = threading.RLock()
        self._lock: FileLock | None = None
        self.bytes_written = 0

    # -- reading -----------------------------------------------------------

    def read(self) -> Document:
        """The current document. Cheap after the first call: only records
        appended since are read and folded."""
        with self._mutex:
            self._refresh()
            assert self._document is not None
            return self._document

    @contextlib.contextmanager
    def reading(self) -> Iterator[Document]:
        """The current document, held still while the block looks at it: a
        worker's lease keeper folds renewals from another thread."""
        with self._mutex:
            yield self.read()

    def subscribe(self) -> Subscription:
        """A consumer's own view of the records folded from now on."""
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    def _publish(self, record: Record) -> None:
        for subscription in self._subscriptions:
            if subscription.pending is not None:
                subscription.pending.append(record)

    def _refresh(self) -> None:
        """Fold what was appended since. A worker refreshes a dozen times a
        step: when the journal is the very file, of the very size, it was
        when everything in it had been folded, that costs one stat."""
        if self._document is None:
            self._load_whole()
            return
        try:
            if self._folded_all_of is not None and (
                _identity(self.journal_path.stat()) == self._folded_all_of
            ):
                return
            self._folded_all_of = None
            with open(self.journal_path, "rb") as journal:
                # Taken before reading: what is appended after it makes the
                # next refresh read again, never skip.
                seen = _identity(os.fstat(journal.fileno()))
                generation, header_end = self._read_header(journal)
                if generation > self._generation:
                    # Compacted by another writer: start over from its snapshot.
                    self._load_whole()
                    return
                if generation < self._generation:
                    return  # a stale journal whose records the snapshot holds
                if self._offset == 0:
                    self._offset = header_end  # a writer has started the journal
                journal.seek(self._offset)
                self._fold_lines(journal.read())
                if self._offset == seen[2]:
                    self._folded_all_of = seen
        except FileNotFoundError:
            if self._offset != 0:
                self._load_whole()

    def _load_whole(self) -> None:
        self._folded_all_of = None
        for _ in range(_READ_RETRIES):
            document, generation, snapshot_bytes = self._read_snapshot()
            self._document, self._generation = document, generation
            self._snapshot_bytes = snapshot_bytes
            self._offset = 0
            for subscription in self._subscriptions:
                subscription.pending = None
            if self.on_load is not None:
                self.on_load(document)
            try:
                with open(self.journal_path, "rb") as journal:
                    journal_generation, header_end = self._read_header(journal)
                    if journal_generation > generation:
                        continue  # compacted between our two reads; read again
                    if journal_generation < generation:
                        return  # left over from a compaction cut short: in the snapshot
                    self._offset = header_end
                    with without_gc():
                        self._fold_lines(journal.read(), publish=False)
            except FileNotFoundError:
                pass
            return
        raise StateUnreadable(
            f"{self.path} kept changing while being read; try again",
            details={"file": str(self.path)},
        )

    def _read_snapshot(self) -> tuple[Document, int, int]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {self.collection: {}}, 0, 0
        except OSError as exc:
            raise StateUnreadable(
                f"cannot read {self.path}: {exc.strerror}", details={"file": str(self.path)}
            ) from None
        try:
            with without_gc():
                document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._unreadable(self.path, f"is not valid JSON ({exc})") from None
        if not isinstance(document, dict) or not isinstance(document.get(self.collection), dict):
            raise self._unreadable(self.path, f"does not hold a {self.collection!r} object")
        self._check_version(self.path, document.get("schema_version"))
        generation = document.pop("generation", 0)
        if not isinstance(generation, int):
            raise self._unreadable(self.path, "has no integer generation")
        return document, generation, len(raw)

    def _read_header(self, journal: Any) -> tuple[int, int]:
        line = journal.readline()
        if not line.endswith(b"\n"):
            # A journal being created is replaced into place whole, so a
            # header without its newline is damage, not a race.
            raise self._unreadable(self.journal_path, "has no complete header line")
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise self._unreadable(self.journal_path, f"has a damaged header ({exc})") from None
        if not isinstance(header, dict) or not isinstance(header.get("generation"), int):
            raise self._unreadable(self.journal_path, "has no generation in its header")
        self._check_version(self.journal_path, header.get("schema_version"))
        return int(header["generation"]), len(line)

    def _fold_lines(self, data: bytes, *, publish: bool = True) -> None:
        end = data.rfind(b"\n")
        if end < 0:
            return
        assert self._document is not None
        # Line by line from the buffer read: a journal holding a 100,000-item
        # batch's creation is not copied whole a second time.
        start = 0
        while start <= end:
            newline = data.index(b"\n", start)
            line, start = data[start:newline], newline + 1
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise self._unreadable(self.journal_path, f"has a damaged record ({exc})") from None
            self.fold(self._document, record)
            if publish:
                self._publish(record)
        self._offset += end + 1

    def _check_version(self, path: Path, version: object) -> None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise self._unreadable(path, "has no integer schema_version")
        if version > self.schema_version:
            raise StateTooNew(
                f"{path} was written by a newer batchctl (schema_version {version}, "
                f"this one reads up to {self.schema_version}); upgrade batchctl. "
                "The file was left untouched.",
                details={"file": str(path), "schema_version": version},
            )

    def _unreadable(self, path: Path, why: str) -> StateUnreadable:
        hint = (
            f"; the last good snapshot is {self.last_good_path}"
            if self.last_good_path.exists()
            else ""
        )
        return StateUnreadable(
            f"{path} {why}. It was left untouched{hint}.",
            details={"file": str(path), "last_good": str(self.last_good_path)},
        )

    # -- writing -----------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[Document]:
        """Hold the file lock; yields the document, fresh. Writes go through
        ``append`` while it is held."""
        with self._mutex, self._locked_file() as document:
            yield document

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[Document]:
        if self._locked:
            raise RuntimeError(f"{self.lock_path} is already held by this process")
        ensure_state_dir(self.path.parent)
        if self._lock is None:
            from filelock import FileLock

            # One lock object for the file's life: making one per write costs
            # more than the write. Threads are kept apart by ``_mutex``.
            self._lock = FileLock(
                self.lock_path, timeout=self.lock_timeout, mode=FILE_MODE, thread_local=False
            )
        lock = self._lock
        take_lock(lock, self.lock_path, self.lock_timeout)
        self._locked = True
        try:
            if not self._swept:
                self._sweep_temp_files()
                self._swept = True
            yield self.read()
        finally:
            self._locked = False
            lock.release()

    def append(self, records: list[Record], *, compact: bool = False) -> None:
        """Append records (under the lock) and fold them in. One write, one
        fsync. With ``compact``, fold the journal into a new snapshot right
        after, whatever its size (removals: the file is to shrink now)."""
        if not self._locked:
            raise RuntimeError("append needs the lock")
        if not records:
            return
        payload = b"".join(orjson.dumps(record) + b"\n" for record in records)
        if self._offset == 0:
            self._start_journal()
        fd = os.open(self.journal_path, os.O_WRONLY)
        try:
            # Whatever lies past the last complete record was left by a
            # writer killed mid-append; we hold the lock, so it is garbage.
            os.ftruncate(fd, self._offset)
            os.lseek(fd, self._offset, os.SEEK_SET)
            self._folded_all_of = None
            try:
                _write_all(fd, payload)
                os.fsync(fd)
                # Under the lock nobody else appends: the file as it stands
                # is what this process has folded once its records are in.
                written = _identity(os.fstat(fd))
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._offset)
                raise write_error(self.journal_path, exc) from None
        finally:
            os.close(fd)
        self.bytes_written += len(payload)
        assert self._document is not None
        for record in records:
            self.fold(self._document, record)
            self._publish(record)
        self._offset += len(payload)
        if written[2] == self._offset:
            self._folded_all_of = written
        if compact or self._offset > max(
            self.compact_min_bytes, COMPACT_RATIO * self._snapshot_bytes
        ):
            self.compact()

    def tidy(self) -> bool:
        """Compact now if the journal is large against the snapshot (see
        TIDY_RATIO); True if it did. Takes the lock."""
        with self.locked():
            journal_bytes = self._offset
            if journal_bytes <= max(TIDY_MIN_BYTES, TIDY_RATIO * self._snapshot_bytes):
                return False
            self.compact()
            return True

    def compact(self) -> None:
        """Fold the journal into a new snapshot (under the lock)."""
        if not self._locked:
            raise RuntimeError("compact needs the lock")
        assert self._document is not None
        generation = self._generation + 1
        snapshot = {
            **self._document,
            "schema_version": self.schema_version,
            "generation": generation,
        }
        written = self._replace(self.path, json_pieces(snapshot), keep_last_good=True)
        self._snapshot_bytes = written
        self._generation = generation
        self._offset = 0
        self._start_journal()
        self._sweep_temp_files()

    def _start_journal(self) -> None:
        self._folded_all_of = None
        header = orjson.dumps(
            {"schema_version": self.schema_version, "generation": self._generation}
        )
        self._replace(self.journal_path, [header + b"\n"], keep_last_good=False)
        self._offset = len(header) + 1

    def _replace(self, target: Path, pieces: Iterable[bytes], *, keep_last_good: bool) -> int:
        """Write ``pieces`` to a temp file, fsync it and move it over
        ``target``; the bytes written."""
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        written = 0
        try:
            try:
                with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as out:
                    for piece in pieces:
                        out.write(piece)
                        written += len(piece)
                os.fsync(fd)
            finally:
                os.close(fd)
            if keep_last_good and target.exists():
                self._keep_last_good(target)
            os.replace(temp_name, target)
            fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                Path(temp_name).unlink()
            raise write_error(target, exc) from None
        self.bytes_written += written
        return written

    def _keep_last_good(self, target: Path) -> None:
        staging = self.last_good_path.with_name(self.last_good_path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        os.link(target, staging)
        os.replace(staging, self.last_good_path)

    def _sweep_temp_files(self) -> None:
        """Temp files are only written under the lock, so any found while we
        hold it were left by a killed writer."""
        for name in (self.path.name, self.journal_path.name):
            for leftover in self.path.parent.glob(f".{name}.*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()


class Subscription:
    """Records folded since the consumer last drained them (its own process's
    appends included)."""

    def __init__(self, file: JournaledFile) -> None:
        self.file = file
        # None: the document was reloaded whole, anything may have changed.
        self.pending: list[Record] | None = None

    def drain(self) -> list[Record] | None:
        with self.file._mutex:
            self.file.read()
            pending, self.pending = self.pending, []
            return pending


_WRITE_BUFFER = 1 << 20
# A dict or list with more members than this is written this many at a time.
PIECE_MEMBERS = 1000


def json_pieces(value: Any, depth: int = 4) -> Iterator[bytes]:
    """The JSON text of ``value`` (what ``orjson.dumps`` gives) in pieces, so
    a snapshot of 50 MB is written without ever holding its whole text: a
    dict or list with more than PIECE_MEMBERS members is dumped that many at
    a time, a smaller one member by member, down to ``depth`` levels (a
    document, its collection, a record, a record's items). Memory: one
    piece, O(PIECE_MEMBERS members)."""
    if depth == 0 or not isinstance(value, dict | list):
        yield orjson.dumps(value)
        return
    opening, closing = (b"{", b"}") if isinstance(value, dict) else (b"[", b"]")
    yield opening
    if len(value) > PIECE_MEMBERS:
        members = iter(value.items()) if isinstance(value, dict) else iter(value)
        first = True
        while chunk := list(itertools.islice(members, PIECE_MEMBERS)):
            body = orjson.dumps(dict(chunk) if isinstance(value, dict) else chunk)[1:-1]
            yield body if first else b"," + body
            first = False
    elif isinstance(value, dict):
        for position, (key, member) in enumerate(value.items()):
            yield (b"," if position else b"") + orjson.dumps(key) + b":"
            yield from json_pieces(member, depth - 1)
    else:
        for position, member in enumerate(value):
            if position:
                yield b","
            yield from json_pieces(member, depth - 1)
    yield closing


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_error(path: Path, exc: OSError) -> StateError:
    """A state file that could not be written, as the user is told it."""
    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
    return StateError(
        f"cannot write {path}: {reason}; nothing was changed",
        details={"file": str(path), "errno": exc.errno},
    )


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """A journal file as a refresh tells it apart: the same file (device,
    inode; a compaction puts a new one in place), the same length, the same
    last change."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
