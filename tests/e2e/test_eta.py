"""History with real runs: a rerun of a batch whose items ran before shows
an ETA in ``status``, and it is close to when the batch really ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_suite, run_batchctl, wait_until, write_plan

# A chain of two 3 s items beside two 2 s items, on a machine of 2 slots:
# the chain sets the pace (6 s); the other two fit beside it.
PLAN = """
version: 1
entries:
  - {name: first, dir: suites/three}
  - {name: second, dir: suites/three, needs: [first]}
  - {name: side1, dir: suites/two}
  - {name: side2, dir: suites/two}
"""


@pytest.mark.slow
def test_a_rerun_shows_an_eta_within_a_fifth_of_the_real_end(workdir: Path) -> None:
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: box, transport: local, tags: [local], slots: 2}\n"
    )
    env = {"BATCHCTL_FLEET": str(workdir / "fleet.yaml")}
    make_suite(workdir / "suites", "three", "#!/bin/sh\nsleep 3\n")
    make_suite(workdir / "suites", "two", "#!/bin/sh\nsleep 2\n")
    write_plan(workdir, PLAN)

    first = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, env=env, timeout=120)
    assert first.code == 0, first.stderr
    assert "eta_s" not in first.json()["data"]["batch"]  # done: nothing left to estimate

    began = datetime.now(UTC)
    again = run_batchctl("run", "plan.yaml", "--new", "--json", cwd=workdir, env=env)
    assert again.code == 0, again.stderr
    batch_id = again.json()["data"]["batch"]["id"]
    shown: dict[str, Any] = {}

    def eta_shown() -> bool:
        view = run_batchctl("status", batch_id, "--json", cwd=workdir, env=env).json()["data"]
        shown.update(view["batch"])
        return "eta_s" in view["batch"]

    wait_until(eta_shown, what="an ETA in status")
    human = run_batchctl("status", batch_id, cwd=workdir, env=env).stdout
    assert "ETA" in human
    assert "from earlier runs of the same items" in human

    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir, env=env, timeout=120)
    assert final.code == 0, final.stderr
    ended = max(
        datetime.fromisoformat(item["run"]["ended_at"])
        for item in final.json()["data"]["batch"]["items"]
    )
    # When status estimated, by its own clock, and how long was really left then.
    estimated_at = datetime.fromisoformat(shown["eta"]) - timedelta(seconds=shown["eta_s"])
    left = (ended - estimated_at).total_seconds()
    assert left > 2, f"estimated {estimated_at - began} after the start: too late to mean much"
    assert abs(shown["eta_s"] - left) <= 0.2 * left, f"ETA {shown['eta_s']}s, {left:.1f}s left"
