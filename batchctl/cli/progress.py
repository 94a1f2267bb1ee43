"""Progress while waiting on a batch: live on a terminal, a timestamped line
per item event when piped (``events``), nothing with --quiet. Never on
stdout in JSON mode."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType

from rich.console import Console
from rich.live import Live

from batchctl.cli.events import ItemEvents
from batchctl.cli.render import batch_table, counts_line
from batchctl.model.viewdoc import BatchReading
from batchctl.model.views import BatchView


class Progress(AbstractContextManager["Progress"]):
    def __init__(self, console: Console, *, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.live: Live | None = None
        self.events = ItemEvents()

    def __enter__(self) -> Progress:
        if not self.quiet and self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=True)
            self.live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, traceback)

    def update(self, reading: BatchReading) -> None:
        if self.quiet:
            return
        if self.live is not None:
            view = BatchView.model_validate(reading.document())
            self.live.update(
                batch_table(view, title=f"batch {view.id}: {counts_line(view.counts)}")
            )
            self.live.refresh()
            return
        for line in self.events.lines(reading):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
