"""The batch bar: done, failed, running, cost so far and ETA, drawn with `rich` on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlm.batch.outcome import Outcome


class BatchProgress:
    """A progress bar over a batch's items; `resumed` items count as done from the start.

    `live=None` draws it when the console is a terminal; `False` draws nothing.
    """

    def __init__(
        self,
        total: int,
        *,
        resumed: int = 0,
        resumed_cost: float = 0.0,
        console: Console | None = None,
        live: bool | None = None,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.live = live if live is not None else self.console.is_terminal
        self.total = total
        self.done = resumed
        self.failed = 0
        self.running = 0
        self.cost = resumed_cost
        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("[cyan]{task.fields[running]} running"),
            TextColumn("${task.fields[cost]:.4f}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            "batch", total=total, completed=resumed, failed=0, running=0, cost=resumed_cost
        )

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def line(self) -> str:
        return (
            f"batch: {self.done}/{self.total} done, {self.failed} failed, "
            f"{self.running} running, ${self.cost:.4f}"
        )

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def finished(self, outcome: Outcome) -> None:
        if outcome.status != "not_run":
            self.running = max(0, self.running - 1)
        self.done += 1
        if outcome.status == "failed":
            self.failed += 1
        if outcome.result is not None and outcome.result.cost_usd is not None:
            self.cost += outcome.result.cost_usd
        self._refresh()

    def _refresh(self) -> None:
        self._progress.update(
            self._task,
            completed=self.done,
            failed=self.failed,
            running=self.running,
            cost=self.cost,
        )
