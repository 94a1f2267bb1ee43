"""The final view of a finished batch: ``views/ID.json.gz``, written once by
the worker that marks the batch finished, under the batches lock.

``status ID --json`` of a finished batch prints it as stored. Reading and
joining the records of a 100,000-item batch costs about a second; this file
costs its decompression, a fraction of that. The records stay the source of
truth, and a view is only ever their rendering once every item is final:

- it is written under the batches lock, just before the ``finished`` record
  (and the worker's last log lines), so nothing changes the batch between
  the two; a worker killed between them leaves a view of a batch whose
  items are all final, which is what the records show too (``done`` comes
  from the items), and the next look that is not this quick one marks it;
- anything that changes a batch again removes its view first, under the
  same lock (``BatchStore``: a retry reopening it, a prune removing it);
- a reader ignores a view of another format or batchctl version, or
  rendered for another place of the state directory (log paths are
  absolute), and then joins the records as it would without one.

File: gzip (level 1: the JSON is about 26 times smaller, some 32 bytes an
item) of one header line, ``{"format": N, "batchctl": V, "batch": ID,
"runs_prefix": P}``, then the exact bytes ``status ID --json`` prints.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from pathlib import Path

import orjson

from batchctl import __version__
from batchctl.model.envelope import ok_envelope_chunks
from batchctl.model.errors import StateError
from batchctl.model.viewdoc import BatchReading
from batchctl.state.journal import fsync_dir

# Raised whenever the view document's shape changes: views written before
# are then ignored, never printed in an older shape.
VIEW_FORMAT = 2  # 2: the view under data.batch
# Items rendered at a time: a chunk's documents are all that is held.
CHUNK_ITEMS = 1000
_COMPRESS_LEVEL = 1  # 7x faster than the default, 10% bigger


def views_dir(state_dir: Path) -> Path:
    return state_dir / "views"


def view_path(state_dir: Path, batch_id: str) -> Path:
    return views_dir(state_dir) / f"{batch_id}.json.gz"


def _header(batch_id: str, runs_prefix: str) -> bytes:
    return orjson.dumps(
        {
            "format": VIEW_FORMAT,
            "batchctl": __version__,
            "batch": batch_id,
            "runs_prefix": runs_prefix,
        }
    )


def write(state_dir: Path, reading: BatchReading, runs_prefix: str) -> int:
    """Render the batch's view and put it in place: temp file, fsync,
    rename. Call under the batches lock. Returns the bytes written; raises
    OSError (nothing is left behind). O(items), a chunk held at a time."""
    directory = views_dir(state_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    _sweep_temp_files(directory)
    batch_id = reading.batch["id"]
    temp = directory / f".{batch_id}.{os.getpid()}.tmp"
    try:
        # Private like every state file (0600), whatever the umask.
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "wb") as out:
            # mtime 0: the same view is the same bytes.
            with gzip.GzipFile(
                fileobj=out, mode="wb", compresslevel=_COMPRESS_LEVEL, mtime=0
            ) as packed:
                packed.write(_header(batch_id, runs_prefix) + b"\n")
                heading, chunks = reading.document_in_chunks(CHUNK_ITEMS)
                for piece in ok_envelope_chunks({}, heading, chunks):
                    packed.write(piece)
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        os.replace(temp, view_path(state_dir, batch_id))
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return written


def read(state_dir: Path, batch_id: str, runs_prefix: str) -> bytes | None:
    """What ``status ID --json`` prints for this finished batch, whole; None
    when there is no view to print: none written (the batch is not finished,
    or was finished by an older batchctl), removed, of another format,
    rendered for another place of the state directory, or damaged."""
    if not _plain_name(batch_id):
        return None  # a prefix or a path is resolved against the records
    try:
        with gzip.open(view_path(state_dir, batch_id), "rb") as packed:
            header = packed.readline()
            if header.rstrip(b"\n") != _header(batch_id, runs_prefix):
                return None
            # Whole before anything is printed: a damaged file is found out
            # (gzip checks its length and CRC at the end), never half shown.
            return packed.read()
    except (OSError, EOFError, zlib.error):
        return None


def remove(state_dir: Path, batch_ids: list[str]) -> None:
    """Remove these batches' views, if any. Call under the batches lock,
    before the change that makes them stale is appended; raises StateError
    if one is there and cannot be removed."""
    removed = False
    for batch_id in batch_ids:
        path = view_path(state_dir, batch_id)
        try:
            path.unlink()
            removed = True
        except (FileNotFoundError, NotADirectoryError):
            continue  # none there (``views`` not even a directory: none anywhere)
        except OSError as exc:
            # Left in place it would show the batch as it was: change nothing.
            raise StateError(
                f"cannot remove {path}, the final view of batch {batch_id}: {exc.strerror}; "
                "nothing was changed",
                details={"file": str(path), "errno": exc.errno},
            ) from None
    if removed:
        # Durable before the record that makes it stale is appended: a view
        # must not come back after a crash that kept the record.
        fsync_dir(views_dir(state_dir))


def _plain_name(batch_id: str) -> bool:
    return bool(batch_id) and "/" not in batch_id and not batch_id.startswith(".")


def _sweep_temp_files(directory: Path) -> None:
    """Views are written under the batches lock only, so a temp file found
    while holding it was left by a killed writer."""
    for leftover in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
