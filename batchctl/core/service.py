"""What each command does, apart from parsing and printing (SPEC §3, §8)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from batchctl.core.errors import InvalidPlan
from batchctl.core.models import Batch, Item, Run
from batchctl.core.plan import Plan, missing_dir_problems
from batchctl.core.views import BatchSummary, BatchView, View, batch_summary, batch_view
from batchctl.runtime.clock import Clock
from batchctl.state.batches import BatchStore
from batchctl.state.runs import RunStore


class SubmitResult(View):
    resumed: bool
    batch: BatchView


class DryRunItem(View):
    name: str
    dir: str
    selector: str
    needs: list[str]
    timeout_s: int
    retries: int
    retry_on: list[str]


class DryRunResult(View):
    plan_hash: str
    staging: str
    source: str
    would_resume: str | None
    items: list[DryRunItem]


def new_batch_id(clock: Clock) -> str:
    """Sortable by creation time, unique by its random tail."""
    return f"{clock.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class BatchService:
    batches: BatchStore
    runs: RunStore
    clock: Clock
    identity: str

    def _runs_of(self, batches: Iterable[Batch]) -> dict[str, Run]:
        return self.runs.get_many(
            item.run_id for batch in batches for item in batch.items.values() if item.run_id
        )

    def view(self, batch: Batch) -> BatchView:
        return batch_view(batch, self._runs_of([batch]))

    def submit(self, plan: Plan, *, staging: str, force_new: bool) -> SubmitResult:
        existing = None if force_new else self.batches.find_newest(plan.plan_hash, staging)
        if existing is None:
            # Directories are checked only when a batch is made: resuming must
            # work even if the checkout moved on since.
            problems = missing_dir_problems(plan)
            if problems:
                raise InvalidPlan(plan.path, problems)

        def new_batch() -> Batch:
            now = self.clock.now()
            return Batch(
                id=new_batch_id(self.clock),
                plan_hash=plan.plan_hash,
                staging=staging,
                created_by=self.identity,
                created_at=now,
                expected_count=len(plan.entries),
                source=plan.source,
                entries=plan.entries,
                items={entry.name: Item(name=entry.name, updated_at=now) for entry in plan.entries},
            )

        batch, resumed = self.batches.create_or_get(
            plan.plan_hash, staging, force_new=force_new, new_batch=new_batch
        )
        return SubmitResult(resumed=resumed, batch=self.view(batch))

    def dry_run(self, plan: Plan, *, staging: str) -> DryRunResult:
        problems = missing_dir_problems(plan)
        if problems:
            raise InvalidPlan(plan.path, problems)
        existing = self.batches.find_newest(plan.plan_hash, staging)
        return DryRunResult(
            plan_hash=plan.plan_hash,
            staging=staging,
            source=plan.source,
            would_resume=existing.id if existing else None,
            items=[
                DryRunItem(
                    name=entry.name,
                    dir=entry.dir,
                    selector=entry.selector,
                    needs=list(entry.needs),
                    timeout_s=entry.timeout_s,
                    retries=entry.retries,
                    retry_on=list(entry.retry_on),
                )
                for entry in plan.entries
            ],
        )

    def status(self, batch_id: str) -> BatchView:
        return self.view(self.batches.get(batch_id))

    def list_batches(self) -> list[BatchSummary]:
        batches = self.batches.all()
        runs = self._runs_of(batches)
        summaries = [batch_summary(batch_view(batch, runs)) for batch in batches]
        return sorted(summaries, key=lambda summary: summary.created_at, reverse=True)
