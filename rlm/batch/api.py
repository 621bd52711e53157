"""`rlm.batch` and `rlm.abatch`: many queries, one shared budget, a restartable results file.

```python
items = [rlm.BatchItem(query=q, context=doc, id=name) for name, q, doc in jobs]
report = rlm.batch(items, model="openai/gpt-4o-mini", max_parallel_runs=32,
                   budget=rlm.Budget(max_cost_usd=2.0),        # per run
                   total_budget=rlm.Budget(max_cost_usd=50),   # the whole batch
                   results="out.jsonl", executor="local")      # or "ray"
report.results, report.failed, report.usage, report.cost_usd
```
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

from rlm._sync import run_blocking
from rlm.batch.local import BatchJob, Executor, LocalExecutor
from rlm.batch.outcome import BatchItem, BatchReport, Outcome, summarize
from rlm.batch.results import ResultsFile
from rlm.batch.spec import RunSpec, check_run_arguments
from rlm.budget import Budget, Ledger
from rlm.errors import ConfigurationError
from rlm.output import FinalValue, InvalidOutput, OutputSpec
from rlm.providers.base import Model

if TYPE_CHECKING:
    from rlm.engine import RLM

ExecutorSpec: TypeAlias = Literal["local", "ray"] | Executor
T = TypeVar("T")


async def abatch(
    items: Iterable[BatchItem],
    model: str | Model,
    sub_model: str | Model | None = None,
    *,
    max_parallel_runs: int = 16,
    total_budget: Budget | None = None,
    results: str | os.PathLike[str] | None = None,
    executor: ExecutorSpec = "local",
    trajectories: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **run_kwargs: Any,
) -> BatchReport:
    """Run every item and report each one, in input order.

    Args:
        items: `rlm.BatchItem(query, context, id=...)`s; ids must be unique (default:
            the item's position).
        model, sub_model, **run_kwargs: what `rlm.run` takes (`budget` limits each run,
            `repl`, `max_iterations`, `on_event`...), passed to every run.
        max_parallel_runs: runs at once.
        total_budget: an `rlm.Budget` for the whole batch, checked before every model call
            of every run: once spent, no call starts anywhere, running runs stop with
            `stop_reason="budget"` and items not started are reported in `not_run`.
            (`ledger=rlm.Ledger(...)` instead shares a ledger you keep.)
        results: a JSONL file each result is appended to as it finishes. Called again
            with the same file, the batch skips the items it holds as finished (by id)
            and reports them from the file.
        executor: "local" (this process), "ray" (`rlm.RayExecutor()`: the Ray instance
            this process joined, else `RAY_ADDRESS`, else a new local one), or an
            executor such as `rlm.RayExecutor(address=...)`.
        trajectories: a folder to write one trajectory file per item (`<id>.jsonl`).
        progress: draw the batch bar on stderr (default: when stderr is a terminal).

    A failing item is recorded in `report.failed` with its error and partial result;
    the batch goes on. Cancelling (Ctrl-C with `batch`) stops every run; each result
    finished before that is already in the results file.
    """
    ledger = _shared_ledger(total_budget, run_kwargs.pop("ledger", None))
    check_run_arguments(run_kwargs)
    _check_priced(ledger.budget, [m for m in (model, sub_model) if m is not None])
    spec = RunSpec(
        model=model,
        sub_model=sub_model,
        kwargs=run_kwargs,
        trajectories=os.fspath(trajectories) if trajectories is not None else None,
    )
    return await execute_batch(
        items,
        spec,
        ledger=ledger,
        max_parallel_runs=max_parallel_runs,
        results=results,
        executor=executor,
        progress=progress,
    )


def batch(
    items: Iterable[BatchItem],
    model: str | Model,
    sub_model: str | Model | None = None,
    **options: Any,
) -> BatchReport:
    """Blocking `abatch` (same arguments); works inside a running event loop too."""
    return run_blocking(lambda: abatch(items, model, sub_model, **options))


async def abatch_with_engine(
    engine: RLM,
    items: Iterable[BatchItem],
    *,
    max_parallel_runs: int = 16,
    total_budget: Budget | None = None,
    results: str | os.PathLike[str] | None = None,
    executor: ExecutorSpec = "local",
    trajectories: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **run_kwargs: Any,
) -> BatchReport:
    """`RLM.abatch`: `abatch` with the engine's configuration."""
    ledger = _shared_ledger(total_budget, run_kwargs.pop("ledger", None))
    check_run_arguments(run_kwargs, engine)
    _check_priced(ledger.budget, [engine.model, engine.sub_model])
    spec = RunSpec(
        engine=engine,
        kwargs=run_kwargs,
        trajectories=os.fspath(trajectories) if trajectories is not None else None,
    )
    return await execute_batch(
        items,
        spec,
        ledger=ledger,
        max_parallel_runs=max_parallel_runs,
        results=results,
        executor=executor,
        progress=progress,
    )


def _output_spec(spec: RunSpec) -> OutputSpec:
    """The answer type the runs of this batch validate against."""
    output_type = spec.kwargs.get("output_type")
    if output_type is not None:
        return OutputSpec(output_type)
    if spec.engine is not None:
        return spec.engine._config.output
    return OutputSpec(None)


def _typed(outcome: Outcome, output: OutputSpec | None) -> Outcome:
    """A result read back from the results file, its output of the batch's type again (the
    file holds it as JSON), as a result the batch ran now has it."""
    result = outcome.result
    if output is None or not output.typed or result is None or result.output is None:
        return outcome
    try:
        answer = output.accept(FinalValue(result.answer or "", json.dumps(result.output)))
    except (InvalidOutput, TypeError, ValueError):
        return outcome  # finished under another output_type: kept as it was read
    return replace(outcome, result=replace(result, output=answer.value))


def _shared_ledger(total_budget: Budget | None, ledger: object) -> Ledger:
    if ledger is not None:
        if total_budget is not None:
            raise ConfigurationError(
                "pass total_budget= or ledger=, not both: a ledger carries its own budget"
            )
        if not isinstance(ledger, Ledger):
            raise ConfigurationError(f"ledger must be an rlm.Ledger, not {type(ledger).__name__}")
        return ledger
    if total_budget is not None and not isinstance(total_budget, Budget):
        raise ConfigurationError(
            f"total_budget must be an rlm.Budget, not {type(total_budget).__name__}"
        )
    return Ledger(total_budget)


def _check_priced(budget: Budget, models: list[str | Model]) -> None:
    """A total cost limit needs prices: an unpriced model would count as free."""
    if budget.max_cost_usd is None:
        return
    from rlm.providers.pricing import price_for
    from rlm.providers.registry import split_model_string

    for model in models:
        name = split_model_string(model)[1] if isinstance(model, str) else model.name
        if price_for(name) is None:
            raise ConfigurationError(
                f"total_budget=Budget(max_cost_usd=...) needs prices, and {name!r} has none. "
                "Add one with rlm.set_price(name, rlm.Price(input=..., output=...)) or use "
                "max_tokens instead."
            )


def _executor(spec: ExecutorSpec) -> Executor:
    if spec == "local":
        return LocalExecutor()
    if spec == "ray":
        from rlm.batch.ray import RayExecutor

        return RayExecutor()
    if isinstance(spec, Executor):
        return spec
    raise ConfigurationError(
        f"executor={spec!r}: use 'local', 'ray' or an executor such as rlm.RayExecutor(address=...)"
    )


def _item_ids(items: list[BatchItem]) -> tuple[str, ...]:
    ids: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, BatchItem):
            raise ConfigurationError(
                f"item {index} is a {type(item).__name__}; make each one an "
                "rlm.BatchItem(query=..., context=..., id=...)"
            )
        item_id = item.id if item.id is not None else str(index)
        if item_id in seen:
            raise ConfigurationError(
                f"two items have the id {item_id!r}; ids name results in the results file, "
                "so each must be unique"
            )
        seen.add(item_id)
        ids.append(item_id)
    return tuple(ids)


async def execute_batch(
    items: Iterable[BatchItem],
    spec: RunSpec,
    *,
    ledger: Ledger,
    max_parallel_runs: int,
    results: str | os.PathLike[str] | None,
    executor: ExecutorSpec,
    progress: bool | None,
) -> BatchReport:
    """The part of `abatch` every entry point shares: ids, results file, bar, executor."""
    if (
        not isinstance(max_parallel_runs, int)
        or isinstance(max_parallel_runs, bool)
        or max_parallel_runs < 1
    ):
        raise ConfigurationError(
            f"max_parallel_runs must be an integer >= 1, not {max_parallel_runs!r}"
        )
    started = time.perf_counter()
    listed = list(items)
    ids = _item_ids(listed)
    runner = _executor(executor)
    outcomes: dict[int, Outcome] = {}
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(ResultsFile(results)) if results is not None else None
        done = store.done if store is not None else {}
        output = _output_spec(spec) if done else None
        for index, item_id in enumerate(ids):
            if item_id in done:
                outcomes[index] = _typed(done[item_id], output)
        resumed = len(outcomes)
        resumed_cost = sum(
            o.result.cost_usd or 0.0 for o in outcomes.values() if o.result is not None
        )
        from rlm.batch.progress import BatchProgress  # rich: only when a batch runs

        bar = stack.enter_context(
            BatchProgress(len(ids), resumed=resumed, resumed_cost=resumed_cost, live=progress)
        )

        def on_done(outcome: Outcome) -> None:
            outcomes[outcome.index] = outcome
            if store is not None and outcome.status != "not_run":
                store.write(outcome)
            bar.finished(outcome)

        jobs = [
            (index, item_id, listed[index])
            for index, item_id in enumerate(ids)
            if index not in outcomes
        ]
        if jobs:
            await runner.execute(
                BatchJob(
                    jobs=jobs,
                    spec=spec,
                    ledger=ledger,
                    max_parallel_runs=max_parallel_runs,
                    on_start=lambda _: bar.started(),
                    on_done=on_done,
                )
            )
    return summarize(ids, outcomes, resumed=resumed, duration_s=time.perf_counter() - started)
