"""How batch state scales: a batch of N items through the real stores.

Measures, on a state directory of its own:
  create   -- creating the batch (one locked write of batches.json)
  tick     -- one scheduler-sized write: 200 items dispatched in one apply_items
  status   -- reading the batch and building the joined status view
and, as the peer in the same run, the plain standard-library round trip of
the same file (json.loads + json.dumps), which is the floor any JSON-file
store pays. The ratio to the peer is what to compare between machines.

    .venv/bin/python bench/state_scale.py --items 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from batchctl.model.models import Batch, Entry, Item, ItemState
from batchctl.model.views import batch_view
from batchctl.state.batches import BatchStore
from batchctl.state.memory import without_gc
from batchctl.state.runs import RunStore


def timed(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    now = datetime(2026, 11, 22, tzinfo=UTC)
    entries = tuple(
        Entry(
            name=f"item-{n:06d}",
            dir=f"suites/s{n % 50}",
            abs_dir=f"/plans/suites/s{n % 50}",
            selector="tag:linux",
            timeout_s=600,
            retries=1,
            retry_on=("error", "timeout"),
        )
        for n in range(args.items)
    )
    batch = Batch(
        id="bench",
        plan_hash="h",
        staging="s",
        created_by="bench@host",
        created_at=now,
        expected_count=len(entries),
        source="inline",
        entries=entries,
        items={e.name: Item(name=e.name, updated_at=now) for e in entries},
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        batches, runs = BatchStore(state), RunStore(state)
        create = timed(
            lambda: batches.create_or_get("h", "s", force_new=True, new_batch=lambda: batch), 1
        )
        size_mb = (state / "batches.json").stat().st_size / 1e6
        names = list(batch.items)[:200]
        tick = timed(
            lambda: batches.apply_items(
                "bench",
                {
                    n: Item(name=n, state=ItemState.DISPATCHED, run_id=f"r-{n}", machine="m")
                    for n in names
                },
            ),
            args.repeat,
        )

        def status_view() -> object:
            with without_gc():  # as BatchService.view builds it
                return batch_view(batches.get("bench"), runs.get_many([]))

        status = timed(status_view, args.repeat)
        path = state / "batches.json"
        peer = timed(lambda: json.dumps(json.loads(path.read_text())), args.repeat)
    print(f"items={args.items} batches.json={size_mb:.1f} MB")
    print(f"create  {create:7.3f} s")
    print(f"tick    {tick:7.3f} s   ({tick / peer:.2f}x the stdlib json round trip)")
    print(f"status  {status:7.3f} s   ({status / peer:.2f}x the stdlib json round trip)")
    print(f"peer    {peer:7.3f} s   (json.loads + json.dumps of batches.json)")


if __name__ == "__main__":
    main()
