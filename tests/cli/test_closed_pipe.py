"""A reader that goes away early (``batchctl status ID | head -1``) ends
nothing: the command goes on to its end, says nothing about the pipe, and
exits with its own code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_suite, run_batchctl, write_plan


def with_reader_gone(*args: str, cwd: Path, stderr_too: bool = False) -> tuple[int, str]:
    """Run batchctl with stdout (and stderr, ``2>&1 | head``) on a pipe
    nobody reads any more: every write to it fails with EPIPE. Returns the
    exit code and stderr (empty when it went to the pipe)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the command writes its first byte
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "batchctl", *args],
            stdout=write_end,
            stderr=write_end if stderr_too else subprocess.PIPE,
            text=True,
            cwd=cwd,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    return completed.returncode, completed.stderr or ""


def test_status_to_a_closed_pipe_exits_by_the_batch_not_the_pipe(workdir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    write_plan(workdir, "version: 1\nentries:\n  - {name: ok, dir: suites/ok}\n")
    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    assert waited.code == 0, waited.stderr
    batch_id = waited.json()["data"]["batch"]["id"]

    # The table, the JSON answered before the command line loads, and the
    # full command line's JSON.
    for args in (
        ("status", batch_id),
        ("status", batch_id, "--json"),
        ("status", batch_id, "--json", "--wait"),
    ):
        read = run_batchctl(*args, cwd=workdir)
        # Same code, same words on stderr (--wait's progress line): nothing
        # about the pipe.
        assert (
            with_reader_gone(*args, cwd=workdir)
            == (read.code, read.stderr)
            == (
                0,
                read.stderr,
            )
        ), args


def test_run_wait_goes_on_to_the_end_when_its_reader_leaves(workdir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    make_suite(workdir / "suites", "bad", "#!/bin/sh\nexit 3\n")
    write_plan(
        workdir,
        "version: 1\nentries:\n  - {name: ok, dir: suites/ok}\n  - {name: bad, dir: suites/bad}\n",
    )

    # Progress lines and the table on the pipe both.
    code, stderr = with_reader_gone("run", "plan.yaml", "--wait", cwd=workdir, stderr_too=True)

    # 1: the batch finished and an item did not pass, as with a reader.
    assert (code, stderr) == (1, "")
    listed = run_batchctl("list", "--json", cwd=workdir).json()["data"]["batches"]
    assert [(batch["done"], batch["counts"]) for batch in listed] == [
        (True, {"passed": 1, "failed": 1})
    ]


def test_a_closed_stdout_is_like_the_null_device(workdir: Path) -> None:
    make_suite(workdir / "suites", "ok")
    write_plan(workdir, "version: 1\nentries:\n  - {name: ok, dir: suites/ok}\n")
    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)
    batch_id = waited.json()["data"]["batch"]["id"]

    for args in (("status", batch_id), ("status", batch_id, "--json"), ("list",)):
        completed = subprocess.run(
            [sys.executable, "-m", "batchctl", *args],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
            timeout=60,
            check=False,
            # `batchctl status ID >&-`: started with no stdout at all.
            preexec_fn=lambda: os.close(1),
        )
        assert (completed.returncode, completed.stderr) == (0, ""), args
