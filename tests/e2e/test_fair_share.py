"""Fair sharing between batches, with real workers: a small batch started
while a 10,000-item batch holds the fleet is not starved by it.

The fleet mixes simulated machines with one real local machine, all tagged
``pool``; the local machine alone is also tagged ``real``. The large batch's
items match ``tag:pool``, so they run on the simulated machines and, for
real, on the local one; the small batch's items match ``tag:real`` and run
only there. Both batches want the local machine's slots: the contention is
real, whatever the simulated machines do."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_suite, run_batchctl, wait_until, write_plan

SMALL_ITEMS = 10
LARGE_ITEMS = 10_000


def fleet(workdir: Path) -> dict[str, str]:
    sims = "".join(
        f"  - {{name: sim{n}, transport: sim, tags: [pool], slots: 1, duration: 2s}}\n"
        for n in range(8)
    )
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: real, transport: local, tags: [pool, real], slots: 2}\n" + sims
    )
    return {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}


def timed_small_batch(
    workdir: Path, env: dict[str, str], timeout: float = 120
) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    result = run_batchctl(
        "run", "small.yaml", "--new", "--wait", "--json", cwd=workdir, env=env, timeout=timeout
    )
    took = time.monotonic() - began
    assert result.code == 0, result.stderr
    batch: dict[str, Any] = result.json()["data"]["batch"]
    return took, batch


@pytest.mark.slow
def test_a_small_batch_is_not_starved_by_a_large_one(workdir: Path) -> None:
    env = fleet(workdir)
    make_suite(workdir / "suites", "small", "#!/bin/sh\nsleep 1\n")
    make_suite(workdir / "suites", "large", "#!/bin/sh\nsleep 0.5\n")
    for name, prefix, suite, tag, count in (
        ("small.yaml", "s", "small", "real", SMALL_ITEMS),
        ("large.yaml", "l", "large", "pool", LARGE_ITEMS),
    ):
        entries = (
            f"  - {{name: {prefix}{n}, dir: suites/{suite}, tag: {tag}}}\n" for n in range(count)
        )
        write_plan(workdir, "version: 1\nentries:\n" + "".join(entries), name=name)

    solo, _ = timed_small_batch(workdir, env)

    started = run_batchctl("run", "large.yaml", "--json", cwd=workdir, env=env, timeout=120)
    assert started.code == 0, started.stderr
    large_id = started.json()["data"]["batch"]["id"]

    def large_items_on_real() -> int:
        view = run_batchctl("status", large_id, "--json", cwd=workdir, env=env).json()["data"]
        return sum(
            1
            for item in view["batch"]["items"]
            if item["outcome"] == "running" and item["machine"] == "real"
        )

    # The large batch holds the local machine before the small one comes.
    wait_until(lambda: large_items_on_real() == 2, what="the large batch on the local machine")

    # Starved, it would wait for most of the 10,000 items: give up well before.
    shared, small = timed_small_batch(workdir, env, timeout=max(30.0, 5 * solo))

    large = run_batchctl("status", large_id, "--json", cwd=workdir, env=env).json()["data"]["batch"]
    assert not large["done"]
    assert large["counts"].get("queued", 0) > LARGE_ITEMS // 2
    assert {item["machine"] for item in small["items"]} == {"real"}
    assert shared <= 2 * solo, f"alone {solo:.1f}s, beside the large batch {shared:.1f}s"

    cancelled = run_batchctl("cancel", large_id, "--json", cwd=workdir, env=env, timeout=120)
    assert cancelled.code == 0, cancelled.stderr
