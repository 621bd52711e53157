"""The public face: `RLM` holds configuration (validated, models resolved, default
telemetry wired); each `run`/`arun`/`stream` call makes a root `_Run` (`rlm/loop.py`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from rlm._sync import run_blocking
from rlm.budget import Budget, Ledger, SharedLedger
from rlm.compaction import DEFAULT_COMPACTION_THRESHOLD, check_threshold
from rlm.errors import ConfigurationError
from rlm.events import EventBus, OnEvent, as_subscribers
from rlm.loop import _Config, _Run, _Shared, _Turn
from rlm.output import OutputSpec
from rlm.providers.base import Model
from rlm.providers.pricing import cost_usd
from rlm.providers.registry import resolve_model
from rlm.repl.base import Repl, ReplFactory, ReplHost, ToolStub
from rlm.result import RLMResult
from rlm.strategies.parsing import FencedCodeParser, ParsingStrategy
from rlm.strategies.termination import TerminationStrategy, default_termination
from rlm.streaming import EventStream
from rlm.tools import RecordedTools, Tool, as_tools

if TYPE_CHECKING:
    from rlm.batch.outcome import BatchItem, BatchReport
    from rlm.session import Session

ReplSpec = Literal["subprocess", "inprocess"] | ReplFactory
ToolsSpec = Sequence[Callable[..., Any] | Tool] | None


def _make_repl_factory(spec: ReplSpec) -> ReplFactory:
    if spec == "inprocess":
        from rlm.repl.inprocess import InProcessRepl

        return InProcessRepl
    if spec == "subprocess":
        from rlm.repl.subprocess import SubprocessRepl

        factory: ReplFactory = SubprocessRepl
        return factory
    if callable(spec):
        return spec
    raise ConfigurationError(
        f"repl={spec!r}: use 'subprocess' (isolated, the default), 'inprocess' (trusted "
        "code only) or a callable returning a Repl"
    )


class RLM:
    """A configured Recursive Language Model: reusable, and safe to share across threads.

    Each `run`/`arun`/`stream` call is independent: its own REPL, ledger and events.
    For a conversation whose turns share one REPL, use `session()`.

    Args:
        model: the root model, a "provider/model" string or a `Model`.
        sub_model: the model behind `llm_query` and child runs (default: `model`).
        max_iterations: model turns before the run asks for a final answer.
        max_depth: 1 means no child runs; 2 allows `rlm_query` children; and so on.
        max_concurrency: sub-calls (and child runs) in flight at once, run-wide.
        budget: token, cost, sub-call and time limits for the whole run tree.
        repl: "subprocess" (isolated worker, default), "inprocess", or a Repl factory.
        parsing: how replies are read (default `FencedCodeParser()`).
        termination: when a run stops (default `default_termination()`).
        max_output_chars: how much of each block's output the model sees.
        context_windows: token windows by model name, for the sub-call size check and
            history compaction (else the model's own `context_window`).
        compaction_threshold: share of the root model's window a request may fill
            before the older history is compacted into a summary (default 0.85); None
            turns compaction off. See `rlm.compaction`.
        on_event: subscriber(s) that receive every event of every run.
        verbose: show a live view of runs in the terminal.
        tools: host functions the model's code can call (see `rlm.tools`); they run on
            the host, never in the REPL.
        sub_tools: the tools of child runs (`rlm_query`); default: the same as `tools`.
        output_type: the type the answer must have (see `rlm.output`): the result's
            `output` is then a validated value of it.
    """

    def __init__(
        self,
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
        on_event: OnEvent = None,
        verbose: bool = False,
        tools: ToolsSpec = None,
        sub_tools: ToolsSpec = None,
        output_type: Any = None,
    ) -> None:
        _require_int("max_iterations", max_iterations, 1)
        _require_int("max_depth", max_depth, 1)
        _require_int("max_concurrency", max_concurrency, 1)
        _require_int("max_output_chars", max_output_chars, 100)
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be an rlm.Budget, not {type(budget).__name__}")
        check_threshold(compaction_threshold)
        if parsing is not None and not isinstance(parsing, ParsingStrategy):
            raise ConfigurationError("parsing must be a rlm.strategies.ParsingStrategy")
        if termination is not None and not isinstance(termination, TerminationStrategy):
            raise ConfigurationError("termination must be a rlm.strategies.TerminationStrategy")
        windows = _context_windows(context_windows)
        root = resolve_model(model)
        sub = resolve_model(sub_model) if sub_model is not None else root
        subscribers = as_subscribers(on_event)
        if verbose:
            from rlm.telemetry.console import ConsoleView

            subscribers.append(ConsoleView())
        self.budget = budget
        self._config = _Config(
            model=root,
            sub_model=sub,
            max_iterations=max_iterations,
            max_depth=max_depth,
            max_concurrency=max_concurrency,
            max_output_chars=max_output_chars,
            repl_factory=_make_repl_factory(repl),
            parsing=parsing or FencedCodeParser(),
            termination=termination or default_termination(),
            context_windows=windows,
            subscribers=tuple(subscribers),
            resolve_model=resolve_model,
            tools=as_tools(tools),
            sub_tools=as_tools(sub_tools) if sub_tools is not None else as_tools(tools),
            output=OutputSpec(output_type),
            compaction_threshold=compaction_threshold,
        )

    @property
    def model(self) -> Model:
        return self._config.model

    @property
    def sub_model(self) -> Model:
        return self._config.sub_model

    @property
    def tool_names(self) -> frozenset[str]:
        """The names of every tool a run of this engine can call (root and child runs)."""
        return frozenset(t.name for t in (*self._config.tools, *self._config.sub_tools))

    @property
    def tool_stubs(self) -> tuple[ToolStub, ...]:
        """What the REPL is told of the root run's tools (a session's REPL gets these)."""
        return tuple(t.stub for t in self._config.tools)

    async def arun(
        self,
        query: str,
        context: object,
        *,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
        ledger: SharedLedger | None = None,
    ) -> RLMResult:
        """Answer `query` over `context`. Cancelling the task stops the whole run tree.

        `output_type` overrides the engine's for this run. `ledger`: an `rlm.Ledger`
        shared with other runs; its budget limits them together.
        """
        return await self._arun(
            query,
            context,
            on_event=on_event,
            budget=budget,
            output_type=output_type,
            ledger=ledger,
        )

    def session(
        self, context: object = None, *, on_event: OnEvent = None, budget: Budget | None = None
    ) -> Session:
        """A conversation over `context`: turns share one REPL, see `rlm.Session`."""
        from rlm.session import Session

        return Session(self, context, on_event=on_event, budget=budget)

    async def _arun(
        self,
        query: str,
        context: object,
        *,
        on_event: OnEvent,
        budget: Budget | None,
        output_type: Any,
        turn: _Turn | None = None,
        session_id: str | None = None,
        ledger: SharedLedger | None = None,
    ) -> RLMResult:
        if not isinstance(query, str) or not query.strip():
            raise ConfigurationError("query must be a non-empty string")
        budget = budget if budget is not None else self.budget
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be an rlm.Budget, not {type(budget).__name__}")
        self._check_cost_budget(budget)
        from rlm.telemetry import default_subscribers

        user_subscribers = [*self._config.subscribers, *as_subscribers(on_event)]
        bus = EventBus([*default_subscribers(user_subscribers), *user_subscribers])
        output = OutputSpec(output_type) if output_type is not None else self._config.output
        shared = _Shared(
            config=self._config,
            bus=bus,
            model_slots=asyncio.Semaphore(self._config.max_concurrency),
            tool_slots=asyncio.Semaphore(self._config.max_concurrency),
            session_id=session_id,
        )
        run = _Run(
            shared,
            Ledger(budget, cost_usd, shared=ledger),
            query=query,
            context=context,
            depth=0,
            model=self._config.model,
            output=output,
            turn=turn,
        )
        return await run.execute()

    async def _arun_turn(
        self,
        query: str,
        context: object,
        *,
        session_id: str,
        repl: Repl,
        attach: Callable[[ReplHost | None], None],
        preamble: str,
        contexts: str,
        on_event: OnEvent,
        budget: Budget | None,
        output_type: Any,
    ) -> RLMResult:
        """One turn of a `Session` (rlm/session.py): on its REPL, after its preamble."""
        return await self._arun(
            query,
            context,
            on_event=on_event,
            budget=budget,
            output_type=output_type,
            turn=_Turn(repl=repl, attach=attach, preamble=preamble, contexts=contexts),
            session_id=session_id,
        )

    def run(
        self,
        query: str,
        context: object,
        *,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
        ledger: SharedLedger | None = None,
    ) -> RLMResult:
        """Blocking `arun`. Works inside a running event loop too (it uses a thread).

        Ctrl-C cancels the run (it ends with `stop_reason="cancelled"`, the REPL closed)
        and then reaches the caller as KeyboardInterrupt, in both cases.
        """
        return run_blocking(
            lambda: self.arun(
                query,
                context,
                on_event=on_event,
                budget=budget,
                output_type=output_type,
                ledger=ledger,
            )
        )

    def stream(
        self,
        query: str,
        context: object,
        *,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
        ledger: SharedLedger | None = None,
    ) -> EventStream:
        """Events as they happen, ending with the root's `RunFinished` (see `EventStream`).

        If the run fails, the `RunFailed` event is yielded and then the error is raised.
        Leaving the `async for` loop early cancels the run, even while the stream object
        is still referenced; `contextlib.aclosing` also waits for its cleanup.
        """
        subscribers = as_subscribers(on_event)
        return EventStream(
            lambda put: self.arun(
                query,
                context,
                on_event=[put, *subscribers],
                budget=budget,
                output_type=output_type,
                ledger=ledger,
            )
        )

    def batch(self, items: Iterable[BatchItem], **options: Any) -> BatchReport:
        """Run many items with this configuration: `rlm.batch` without the model arguments
        (`max_parallel_runs`, `total_budget`, `results`, `executor`, `budget`, ...)."""
        from rlm.batch.api import abatch_with_engine

        return run_blocking(lambda: abatch_with_engine(self, items, **options))

    async def abatch(self, items: Iterable[BatchItem], **options: Any) -> BatchReport:
        """Async `batch`."""
        from rlm.batch.api import abatch_with_engine

        return await abatch_with_engine(self, items, **options)

    async def aresume(
        self,
        trajectory: str | os.PathLike[str],
        *,
        context: object,
        on_event: OnEvent = None,
        budget: Budget | None = None,
    ) -> RLMResult:
        """Continue the run recorded in `trajectory` (see `rlm.replay`): recorded model
        calls are answered from the file, the rest are made with this engine's models."""
        from rlm.replay import prepare_resume

        prepared = prepare_resume(self, trajectory, context)
        try:
            result = await prepared.engine.arun(
                prepared.point.query, context, on_event=on_event, budget=budget
            )
        except BaseException as exc:
            prepared.mark_error(exc)
            raise
        return prepared.finish(result)

    def resume(
        self,
        trajectory: str | os.PathLike[str],
        *,
        context: object,
        on_event: OnEvent = None,
        budget: Budget | None = None,
    ) -> RLMResult:
        """Blocking `aresume`. Works inside a running event loop too, as `run` does."""
        from rlm.replay import prepare_resume

        prepared = prepare_resume(self, trajectory, context)
        try:
            result = prepared.engine.run(
                prepared.point.query, context, on_event=on_event, budget=budget
            )
        except BaseException as exc:
            prepared.mark_error(exc)
            raise
        return prepared.finish(result)

    def _for_resume(self, model: Model, sub_model: Model, tools: RecordedTools) -> RLM:
        """This engine with replays in front of its models and tools (see `rlm.replay`)."""
        clone = object.__new__(RLM)
        clone.__dict__.update(self.__dict__)
        clone._config = replace(
            self._config, model=model, sub_model=sub_model, recorded_tools=tools
        )
        return clone

    def _check_cost_budget(self, budget: Budget | None) -> None:
        if budget is None or budget.max_cost_usd is None:
            return
        from rlm.providers.pricing import price_for

        for model in {self._config.model.name, self._config.sub_model.name}:
            if price_for(model) is None:
                raise ConfigurationError(
                    f"Budget(max_cost_usd=...) needs prices, and {model!r} has none. Add one "
                    "with rlm.set_price(name, rlm.Price(input=..., output=...)) or use "
                    "max_tokens instead."
                )


def _require_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, not {value!r}")


def _context_windows(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"context_windows must map model names to token counts, like "
            f"{{'gpt-4o-mini': 128_000}}, not {value!r}"
        )
    for name, tokens in value.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"context_windows keys are model names (str), not {name!r}")
        _require_int(f"context_windows[{name!r}]", tokens, 1)
    return dict(value)
