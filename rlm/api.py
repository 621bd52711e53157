"""`rlm.run`, `rlm.arun`, `rlm.stream` and `rlm.resume`: one-call use of an `RLM`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rlm.budget import Budget, SharedLedger
from rlm.compaction import DEFAULT_COMPACTION_THRESHOLD
from rlm.engine import RLM, ReplSpec, ToolsSpec
from rlm.events import OnEvent
from rlm.providers.base import Model
from rlm.result import RLMResult
from rlm.strategies.parsing import ParsingStrategy
from rlm.strategies.termination import TerminationStrategy
from rlm.streaming import EventStream


def _engine(
    model: str | Model,
    sub_model: str | Model | None,
    max_iterations: int,
    max_depth: int,
    max_concurrency: int,
    budget: Budget | None,
    repl: ReplSpec,
    parsing: ParsingStrategy | None,
    termination: TerminationStrategy | None,
    max_output_chars: int,
    context_windows: Mapping[str, int] | None,
    compaction_threshold: float | None,
    verbose: bool,
    tools: ToolsSpec,
    sub_tools: ToolsSpec,
    output_type: Any,
) -> RLM:
    return RLM(
        model,
        sub_model,
        max_iterations=max_iterations,
        max_depth=max_depth,
        max_concurrency=max_concurrency,
        budget=budget,
        repl=repl,
        parsing=parsing,
        termination=termination,
        max_output_chars=max_output_chars,
        context_windows=context_windows,
        compaction_threshold=compaction_threshold,
        verbose=verbose,
        tools=tools,
        sub_tools=sub_tools,
        output_type=output_type,
    )


def run(
    query: str,
    context: object,
    model: str | Model,
    sub_model: str | Model | None = None,
    *,
    max_iterations: int = 20,
    max_depth: int = 1,
    max_concurrency: int = 16,
    budget: Budget | None = None,
    repl: ReplSpec = "subprocess",
    parsing: ParsingStrategy | None = None,
    termination: TerminationStrategy | None = None,
    max_output_chars: int = 10_000,
    context_windows: Mapping[str, int] | None = None,
    compaction_threshold: float | None = DEFAULT_COMPACTION_THRESHOLD,
    verbose: bool = False,
    on_event: OnEvent = None,
    tools: ToolsSpec = None,
    sub_tools: ToolsSpec = None,
    output_type: Any = None,
    ledger: SharedLedger | None = None,
) -> RLMResult:
    """Answer `query` over `context` (str, list, dict or any picklable object).

    See `rlm.RLM` for the arguments (`tools=[fn, ...]` for functions the model's code
    can call, `output_type=` for a typed answer in `result.output`, `ledger=` an
    `rlm.Ledger` shared by several runs, whose budget limits them together). Blocking;
    `arun` is the async form.
    """
    engine = _engine(
        model,
        sub_model,
        max_iterations,
        max_depth,
        max_concurrency,
        budget,
        repl,
        parsing,
        termination,
        max_output_chars,
        context_windows,
        compaction_threshold,
        verbose,
        tools,
        sub_tools,
        output_type,
    )
    return engine.run(query, context, on_event=on_event, ledger=ledger)


async def arun(
    query: str,
    context: object,
    model: str | Model,
    sub_model: str | Model | None = None,
    *,
    max_iterations: int = 20,
    max_depth: int = 1,
    max_concurrency: int = 16,
    budget: Budget | None = None,
    repl: ReplSpec = "subprocess",
    parsing: ParsingStrategy | None = None,
    termination: TerminationStrategy | None = None,
    max_output_chars: int = 10_000,
    context_windows: Mapping[str, int] | None = None,
    compaction_threshold: float | None = DEFAULT_COMPACTION_THRESHOLD,
    verbose: bool = False,
    on_event: OnEvent = None,
    tools: ToolsSpec = None,
    sub_tools: ToolsSpec = None,
    output_type: Any = None,
    ledger: SharedLedger | None = None,
) -> RLMResult:
    """Async `run`: same arguments. Cancelling the task stops the whole run tree."""
    engine = _engine(
        model,
        sub_model,
        max_iterations,
        max_depth,
        max_concurrency,
        budget,
        repl,
        parsing,
        termination,
        max_output_chars,
        context_windows,
        compaction_threshold,
        verbose,
        tools,
        sub_tools,
        output_type,
    )
    return await engine.arun(query, context, on_event=on_event, ledger=ledger)


def stream(
    query: str,
    context: object,
    model: str | Model,
    sub_model: str | Model | None = None,
    *,
    max_iterations: int = 20,
    max_depth: int = 1,
    max_concurrency: int = 16,
    budget: Budget | None = None,
    repl: ReplSpec = "subprocess",
    parsing: ParsingStrategy | None = None,
    termination: TerminationStrategy | None = None,
    max_output_chars: int = 10_000,
    context_windows: Mapping[str, int] | None = None,
    compaction_threshold: float | None = DEFAULT_COMPACTION_THRESHOLD,
    verbose: bool = False,
    on_event: OnEvent = None,
    tools: ToolsSpec = None,
    sub_tools: ToolsSpec = None,
    output_type: Any = None,
    ledger: SharedLedger | None = None,
) -> EventStream:
    """Events of a run as they happen, ending with `RunFinished`: see `EventStream`.

    Leaving the `async for` loop early cancels the run.
    """
    engine = _engine(
        model,
        sub_model,
        max_iterations,
        max_depth,
        max_concurrency,
        budget,
        repl,
        parsing,
        termination,
        max_output_chars,
        context_windows,
        compaction_threshold,
        verbose,
        tools,
        sub_tools,
        output_type,
    )
    return engine.stream(query, context, on_event=on_event, ledger=ledger)


def _resume_engine(
    trajectory: str | os.PathLike[str],
    model: str | Model | None,
    sub_model: str | Model | None,
    options: dict[str, Any],
) -> RLM:
    from rlm.replay import load_resume_point

    started = load_resume_point(trajectory).started
    options.setdefault("max_iterations", started.max_iterations)
    options.setdefault("max_depth", started.max_depth)
    if model is None:
        from rlm.replay import ResumePoint

        model = ResumePoint.model_string_of(started)
    return RLM(model, sub_model, **options)


def resume(
    trajectory: str | os.PathLike[str],
    *,
    context: object,
    model: str | Model | None = None,
    sub_model: str | Model | None = None,
    budget: Budget | None = None,
    on_event: OnEvent = None,
    **options: Any,
) -> RLMResult:
    """Continue a run that died, from its trajectory file; see `rlm.replay`.

    `context` must be the run's context, unchanged. `model` defaults to the recorded
    root model (as a model string), `max_iterations` and `max_depth` to the recorded
    ones; `options` are any other keyword arguments of `rlm.RLM`. Recorded model calls
    are answered from the file; the result covers the whole run (`result.resumed`).
    """
    engine = _resume_engine(trajectory, model, sub_model, options)
    return engine.resume(trajectory, context=context, on_event=on_event, budget=budget)


async def aresume(
    trajectory: str | os.PathLike[str],
    *,
    context: object,
    model: str | Model | None = None,
    sub_model: str | Model | None = None,
    budget: Budget | None = None,
    on_event: OnEvent = None,
    **options: Any,
) -> RLMResult:
    """Async `resume`: same arguments."""
    engine = _resume_engine(trajectory, model, sub_model, options)
    return await engine.aresume(trajectory, context=context, on_event=on_event, budget=budget)
