"""The `Executor` protocol and `LocalExecutor`: runs of a batch in this process's event loop.

Runs spend nearly all their time waiting on model calls, so one event loop carries many
of them; each run still gets its own REPL (a sandboxed worker process by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rlm.batch.outcome import BatchItem, Outcome
from rlm.batch.spec import RunSpec, run_item
from rlm.budget import Ledger


@dataclass(frozen=True, slots=True)
class BatchJob:
    """What an executor is asked to do.

    `jobs` are (position, id, item) still to run; `ledger` is the batch's shared ledger
    (its budget is `total_budget`), checked before each item starts and passed to every
    run. The executor calls `on_start(position)` as a run starts and `on_done(outcome)`
    as each ends (also for items it never starts: status "not_run"), from the event
    loop's thread.
    """

    jobs: Sequence[tuple[int, str, BatchItem]]
    spec: RunSpec
    ledger: Ledger | None
    max_parallel_runs: int
    on_start: Callable[[int], None]
    on_done: Callable[[Outcome], None]


@runtime_checkable
class Executor(Protocol):
    """Where the runs of a batch happen. Cancelling `execute` must stop every run."""

    async def execute(self, job: BatchJob) -> None: ...


class LocalExecutor:
    """Runs up to `max_parallel_runs` items at once as tasks of the running event loop."""

    async def execute(self, job: BatchJob) -> None:
        spec = job.spec.prepared()
        pending = iter(job.jobs)  # shared: each item is taken by one worker
        ledger = job.ledger

        async def worker() -> None:
            for index, item_id, item in pending:
                if ledger is not None and ledger.exceeded() is not None:
                    job.on_done(Outcome(index, item_id, "not_run"))
                    continue
                job.on_start(index)
                job.on_done(await run_item(spec, index, item_id, item, ledger))

        # A TaskGroup cancels every worker (and so every run) when the batch is cancelled.
        async with asyncio.TaskGroup() as group:
            for _ in range(min(job.max_parallel_runs, len(job.jobs))):
                group.create_task(worker())

    def __repr__(self) -> str:
        return "LocalExecutor()"
