"""Progress while waiting on a batch: live on a terminal, a timestamped line
per item event when piped (``events``), nothing with --quiet. Never on
stdout in JSON mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType

from rich.console import Console
from rich.live import Live

from batchctl.cli.events import ItemEvents
from batchctl.cli.live import live_table
from batchctl.model.viewdoc import BatchReading
from batchctl.model.views import BatchView


class Progress(AbstractContextManager["Progress"]):
    def __init__(
        self,
        console: Console,
        *,
        quiet: bool,
        now: Callable[[], datetime],
        expected: Callable[[], Mapping[str, float]],
    ) -> None:
        """``expected`` gives earlier durations of the items, asked for only
        when a live table is shown."""
        self.console = console
        self.quiet = quiet
        self.live: Live | None = None
        self.events = ItemEvents()
        self.now = now
        self._expected_of = expected
        self._expected: Mapping[str, float] | None = None

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
            if self._expected is None:
                self._expected = self._expected_of()
            view = BatchView.model_validate(reading.document())
            self.live.update(
                live_table(
                    view, height=self.console.size.height, now=self.now(), expected=self._expected
                )
            )
            self.live.refresh()
            return
        for line in self.events.lines(reading):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
