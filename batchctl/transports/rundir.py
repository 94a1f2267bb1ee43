"""Files a run's supervisor keeps in the run's directory, beside its log.

They carry what changes often or must survive the supervisor, without a
write to runs.json: the heartbeat (a counter another host watches move), the
test's process group, and the outcome, written before it is recorded in
runs.json so that if recording fails (lock timeout, the supervisor killed
just then) the next worker still finds it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import orjson

from batchctl.model.models import RunStatus
from batchctl.transports.runners.base import Ended

HEARTBEAT = "heartbeat"
PGID = "pgid"
CLAIM = "claim"
RESULT = "result.json"


def write_atomically(path: Path, payload: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp_name).unlink()
        raise


def beat(run_dir: Path, count: int) -> None:
    with contextlib.suppress(OSError):
        write_atomically(run_dir / HEARTBEAT, str(count).encode())


def read_beat(run_dir: Path) -> str | None:
    try:
        return (run_dir / HEARTBEAT).read_text()
    except OSError:
        return None


def write_pgid(run_dir: Path, pgid: int) -> None:
    write_atomically(run_dir / PGID, str(pgid).encode())


def read_pgid(run_dir: Path) -> int | None:
    """The test's process group: recorded by an executor, or, for a local
    run, the pid in its claim (the wrapper leads the group it made)."""
    for name in (PGID, CLAIM):
        try:
            return int((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def write_result(run_dir: Path, ended: Ended) -> None:
    payload = {
        "status": ended.status.value,
        "exit_code": ended.exit_code,
        "error_code": ended.error_code,
        "message": ended.message,
    }
    write_atomically(run_dir / RESULT, orjson.dumps(payload))


def read_result(run_dir: Path) -> Ended | None:
    try:
        raw = orjson.loads((run_dir / RESULT).read_bytes())
        return Ended(
            RunStatus(raw["status"]),
            exit_code=raw.get("exit_code"),
            error_code=raw.get("error_code"),
            message=raw.get("message"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
