"""The loop. `RLM` holds configuration; each call makes a `_Run`, child runs make more.

The engine knows the protocols (`Model`, `Repl`, `ParsingStrategy`,
`TerminationStrategy`, event subscribers) and nothing concrete behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from rlm import prompts
from rlm._sync import run_blocking
from rlm.budget import Budget, Ledger, SharedLedger
from rlm.compaction import (
    DEFAULT_COMPACTION_THRESHOLD,
    UNSUMMARISED,
    Compaction,
    Measured,
    check_threshold,
    measure,
)
from rlm.errors import (
    BudgetExceeded,
    ConfigurationError,
    ContextTooLongError,
    ProviderError,
    RLMError,
)
from rlm.events import (
    CodeExecuted,
    CodeStarted,
    Event,
    EventBus,
    FinalAnswer,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    ModelRetry,
    OnEvent,
    ReplViolation,
    RunFailed,
    RunFinished,
    RunStarted,
    as_subscribers,
    clip,
    new_id,
)
from rlm.fingerprint import context_fingerprint
from rlm.output import UNTYPED, Answer, FinalValue, InvalidOutput, OutputSpec
from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
    ModelPurpose,
    ModelRequest,
    ModelResponse,
    RetryDetails,
    ToolSpec,
    describe_model,
    retry_listener,
)
from rlm.providers.pricing import cost_usd
from rlm.providers.registry import resolve_model
from rlm.repl.base import ExecutionResult, Repl, ReplFactory, ReplHost, ToolStub
from rlm.result import CodeExecution, Iteration, RLMResult, StopReason
from rlm.strategies.parsing import FencedCodeParser, FinalMarker, ParsedReply, ParsingStrategy
from rlm.strategies.termination import (
    AnyOf,
    BudgetLimit,
    DeadlineLimit,
    FinalAnswerReached,
    MaxIterations,
    RunState,
    Stop,
    TerminationStrategy,
    default_termination,
)
from rlm.streaming import EventStream
from rlm.subcalls import CHILD_QUERY, SubcallRouter, window_chars
from rlm.tools import RecordedTools, Tool, ToolDispatch, as_tools

if TYPE_CHECKING:
    from rlm.batch.outcome import BatchItem, BatchReport
    from rlm.session import Session

ReplSpec = Literal["subprocess", "inprocess"] | ReplFactory
ToolsSpec = Sequence[Callable[..., Any] | Tool] | None

# The engine ends a run on these whatever termination strategy is configured.
_HARD_STOPS = AnyOf(FinalAnswerReached(), BudgetLimit(), DeadlineLimit(), MaxIterations())


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


@dataclass(frozen=True, slots=True)
class _Config:
    model: Model
    sub_model: Model
    max_iterations: int
    max_depth: int
    max_concurrency: int
    max_output_chars: int
    repl_factory: ReplFactory
    parsing: ParsingStrategy
    termination: TerminationStrategy
    context_windows: Mapping[str, int]
    subscribers: tuple[Callable[..., Any], ...]
    tools: tuple[Tool, ...] = ()
    sub_tools: tuple[Tool, ...] = ()
    output: OutputSpec = UNTYPED
    compaction_threshold: float | None = DEFAULT_COMPACTION_THRESHOLD
    # Tool outcomes answered from a recording instead of calling the tools (a resume).
    recorded_tools: RecordedTools | None = None


@dataclass(frozen=True, slots=True)
class _Turn:
    """A session's turn: run on the session's REPL (started before, closed after by the
    session). `preamble` goes before the query (earlier turns, variables, contexts);
    `contexts` (the contexts' names) stays when the history is compacted."""

    repl: Repl
    attach: Callable[[ReplHost | None], None]
    preamble: str
    contexts: str

    def before(self, text: str, *, compacted: bool = False) -> str:
        lead = self.contexts if compacted else self.preamble
        return f"{lead}\n\n{text}" if lead else text


@dataclass
class _Shared:
    """What every run in one tree shares."""

    config: _Config
    bus: EventBus
    model_slots: asyncio.Semaphore
    tool_slots: asyncio.Semaphore
    child_slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    session_id: str | None = None

    def child_slot(self, depth: int) -> asyncio.Semaphore:
        # One pool per depth: a run waiting for a child slot never holds a slot of the
        # pool its own children wait on, so nested batches cannot deadlock.
        if depth not in self.child_slots:
            self.child_slots[depth] = asyncio.Semaphore(self.config.max_concurrency)
        return self.child_slots[depth]


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


class _Run:
    """One run: the loop over model turns, and the host side of the REPL's helpers."""

    def __init__(
        self,
        shared: _Shared,
        ledger: Ledger,
        *,
        query: str,
        context: object,
        depth: int,
        model: Model,
        parent_run_id: str | None = None,
        parent_subcall_id: str | None = None,
        output: OutputSpec = UNTYPED,
        turn: _Turn | None = None,
        path: str = "r",
    ) -> None:
        self.shared = shared
        self.turn = turn
        self.config = shared.config
        self.ledger = ledger
        self.query = query
        self.context = context
        self.depth = depth
        self.model = model
        self.model_info = describe_model(model)
        self.run_id = new_id()
        self.parent_run_id = parent_run_id
        self.parent_subcall_id = parent_subcall_id
        # Where this run sits in its tree ("r", "r/s3", "r/s3/s1.4", ...), the same on
        # every run of the same code: replay and resume match recorded calls by it.
        self.path = path
        self.iteration = 0
        self.history: list[Iteration] = []
        self.errors: list[str | None] = []
        self.current_exec_id: str | None = None
        self.fatal: BaseException | None = None
        # How the answer was read, when not plainly (see RLMResult).
        self.resolved_variable: str | None = None
        self.from_prose = False
        self.output = output
        tools = self.config.tools if depth == 0 else self.config.sub_tools
        self.subcalls = SubcallRouter(
            self, ToolDispatch(tools, self, shared.tool_slots, self.config.recorded_tools)
        )
        self.interrupt: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None
        self.started = time.perf_counter()
        self.compaction = Compaction(
            shared.config.compaction_threshold, self.subcalls.window_tokens(self.model_info)
        )
        self.measured: Measured | None = None  # the last root request, as the provider counted
        self.context_fingerprint = context_fingerprint(context)
        self.request_metadata = {
            "rlm.run_id": self.run_id,
            "rlm.depth": str(depth),
            "rlm.context_fingerprint": self.context_fingerprint,
        }

    # -- events ---------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "depth": self.depth,
            "session_id": self.shared.session_id,
        }

    async def emit(self, event: Event) -> None:
        await self.shared.bus.emit(event)

    # -- the loop ---------------------------------------------------------------------

    async def execute(self) -> RLMResult:
        """Run the loop; whatever ends it, the REPL is closed and exactly one `RunFinished`
        or `RunFailed` is emitted before the result is returned or the exception raised."""
        self.task = asyncio.current_task()
        config = self.config
        info = prompts.describe_context(self.context)
        repl: Repl | None = None
        ending: Event | None = None
        ended = False  # normally: a subscriber's BaseException on the ending event may rise
        try:
            await self.emit(
                RunStarted(
                    **self._base(),
                    query=self.query,
                    model=self.model_info.name,
                    sub_model=config.sub_model.name,
                    provider=self.model_info.provider,
                    max_iterations=config.max_iterations,
                    max_depth=config.max_depth,
                    context_type=info.type_name,
                    context_chars=info.chars,
                    parent_subcall_id=self.parent_subcall_id,
                    context_fingerprint=self.context_fingerprint,
                    model_context_window=self.model_info.context_window,
                    sub_model_context_window=describe_model(config.sub_model).context_window,
                )
            )
            if self.turn is None:
                repl = config.repl_factory()
                await repl.start(self.context, self.subcalls)
            else:
                self.turn.attach(self.subcalls)
                repl = self.turn.repl
            stop, answer = await self._within_deadline(repl, self._opening_messages(info))
            result = self._result(answer, stop)
            ending = RunFinished(**self._base(), result=result)
            ended = True
        except asyncio.CancelledError:
            interrupt = self.interrupt
            if interrupt is None:
                ending = RunFinished(**self._base(), result=self._cancelled())
                raise
            # abort(): not a cancellation but the BaseException that caused it.
            if self.task is not None:
                self.task.uncancel()
            ending = self._failed(interrupt)
            raise interrupt from interrupt.__cause__
        except Exception as exc:
            ending = self._failed(exc)
            if not isinstance(exc, RLMError):
                raise
            # A copy: `exc` may be shared (a child run's error, a scripted step), and the
            # caller must get this run's result, not that of the first run that saw it.
            error = exc.with_result(self._result(None, Stop("error", str(exc)), error=exc))
            raise error from exc.__cause__
        except BaseException as exc:
            ending = self._failed(exc)
            raise
        finally:
            await self._finish(repl, ending, quiet=not ended)
        return result

    def _failed(self, exc: BaseException) -> RunFailed:
        return RunFailed(**self._base(), error_type=type(exc).__name__, error=str(exc))

    def _cancelled(self) -> RLMResult:
        deadline_passed = self.ledger.budget.max_seconds is not None and (
            self.ledger.remaining_seconds() == 0
        )
        reason: StopReason = "deadline" if deadline_passed else "cancelled"
        return self._result(None, Stop(reason, "the run was cancelled"))

    def abort(self, exc: BaseException) -> None:
        """End the run with `exc`, a BaseException (KeyboardInterrupt, SystemExit...) that
        a sub-call's model or a subscriber raised on another task: the run's task is
        cancelled, and `execute` raises `exc` instead of the cancellation."""
        if self.interrupt is None:
            self.interrupt = exc
            if self.task is not None and not self.task.done():
                self.task.cancel()

    async def _within_deadline(
        self, repl: Repl, messages: list[Message]
    ) -> tuple[Stop, Answer | None]:
        deadline = self.ledger.remaining_seconds() if self.depth == 0 else None
        scope = asyncio.timeout(deadline)
        try:
            async with scope:
                stop, answer = await self._loop(repl, messages)
                if stop.ask_for_final and answer is None:
                    # Inside the deadline: the last reply's code runs too.
                    answer = await self._ask_for_final(repl, messages)
                return stop, answer
        except TimeoutError:
            if not scope.expired():
                raise  # the model's own TimeoutError: an error, not the deadline
            return Stop("deadline", "the deadline passed", limit="max_seconds"), None

    async def _finish(self, repl: Repl | None, ending: Event | None, *, quiet: bool) -> None:
        """Close the REPL, cancel sub-calls still running, then emit `ending`. With `quiet`
        (an exception is on its way out), a subscriber's exception on `ending` does not
        replace it."""
        try:
            if self.turn is not None:
                self.turn.attach(None)  # the session's REPL stays open for the next turn
            elif repl is not None:
                await repl.close()
            await self.subcalls.cancel_pending()
        finally:
            if ending is not None:
                if quiet:
                    with contextlib.suppress(BaseException):
                        await self.emit(ending)
                else:
                    await self.emit(ending)

    def _opening_messages(self, info: prompts.ContextInfo) -> list[Message]:
        sub_info = describe_model(self.config.sub_model)
        window = self.subcalls.window_tokens(sub_info)
        system = prompts.system_prompt(
            context_type=prompts.context_summary(info),
            format_instructions=self.config.parsing.instructions(),
            can_recurse=self.depth + 1 < self.config.max_depth,
            subcall_window_chars=window_chars(window) if window else None,
            tools=self.subcalls.tool_stubs,
        )
        first = prompts.first_user_message(self.query, info, self.output.instructions())
        if self.turn is not None:
            first = self.turn.before(first)
        return [Message("system", system, cache_breakpoint=True), Message("user", first)]

    async def _loop(self, repl: Repl, messages: list[Message]) -> tuple[Stop, Answer | None]:
        config = self.config
        parsing = config.parsing
        tools = parsing.tools()
        while True:
            self.iteration += 1
            turn_started = time.perf_counter()
            await self.emit(IterationStarted(**self._base(), iteration=self.iteration))
            try:
                if self.compaction.needed(messages, self.measured):
                    await self._compact(messages)
                response = await self.call_model(
                    self.model, self.model_info, messages, purpose="root", tools=tools
                )
            except BudgetExceeded as exc:
                self.iteration -= 1
                return self._budget_stop(exc), None
            usage_before = response.usage
            parsed = parsing.parse(response)
            reply = parsing.assistant_message(response)
            if response.provider_items and not reply.provider_items:
                # Reasoning models need their reasoning back next turn, whatever the
                # strategy wrote; the adapter checks the items still match the content.
                reply = replace(reply, provider_items=response.provider_items)
            messages.append(reply)
            self.measured = measure(len(messages), response.usage)
            executions, outputs, final, source, last_error = await self._run_blocks(repl, parsed)
            if final is None and parsed.final is not None:
                final, note, self.resolved_variable = await self._resolve_marker(repl, parsed.final)
                source = "text"
                if note:
                    outputs.append(note)
                    last_error = note
            answer: Answer | None = None
            if final is not None:
                try:
                    answer = self.output.accept(final)
                except InvalidOutput as exc:
                    # Not an answer: the model is told what to fix and the run goes on.
                    note = prompts.invalid_answer(str(exc))
                    outputs.append(note)
                    last_error = note
            if not parsed.code_blocks and parsed.final is None:
                messages.extend(parsing.reminder(response))
            elif answer is None or outputs:
                messages.extend(parsing.feedback(parsed, outputs))
            self.history.append(
                Iteration(
                    index=self.iteration,
                    response=response.text,
                    executions=tuple(executions),
                    final_answer=answer.text if answer is not None else None,
                    usage=usage_before,
                    duration_s=time.perf_counter() - turn_started,
                )
            )
            self.errors.append(last_error)
            if self.fatal is not None:
                raise self.fatal
            if answer is not None:
                await self.emit(
                    FinalAnswer(
                        **self._base(),
                        answer=answer.text,
                        source=source,
                        iteration=self.iteration,
                        resolved_variable=self.resolved_variable,
                    )
                )
            stop = self._check_termination(answer.text if answer is not None else None)
            if stop is not None:
                return stop, answer

    async def _compact(self, messages: list[Message]) -> None:
        """Replace the history after the system prompt by the model's own summary."""
        before = list(messages)
        request = self.compaction.summary_request(before)
        try:
            response = await self.call_model(
                self.model, self.model_info, request, purpose="compaction"
            )
            summary = response.text
        except ContextTooLongError:
            summary = UNSUMMARISED  # the history is dropped; the REPL still has the work
        info = prompts.describe_context(self.context)
        restart = prompts.first_user_message(self.query, info, self.output.instructions())
        if self.turn is not None:
            restart = self.turn.before(restart, compacted=True)
        messages[:] = self.compaction.compacted(before, restart, summary)
        await self.emit(
            self.compaction.event(
                self._base(),
                iteration=self.iteration,
                model=self.model_info.name,
                before=before,
                after=messages,
                summary=summary,
                measured=self.measured,
            )
        )
        self.measured = None

    def _check_termination(self, final: str | None) -> Stop | None:
        snap = self.ledger.snapshot()
        exceeded = self.ledger.exceeded()
        state = RunState(
            iteration=self.iteration,
            max_iterations=self.config.max_iterations,
            depth=self.depth,
            final_answer=final,
            usage=snap.usage,
            cost_usd=snap.cost_usd,
            subcalls=snap.subcalls,
            elapsed_s=self.ledger.elapsed(),
            budget=self.ledger.budget,
            exceeded_limit=exceeded.limit if exceeded else None,
            exceeded_message=str(exceeded) if exceeded else None,
            errors=tuple(self.errors),
        )
        return self.config.termination.check(state) or _HARD_STOPS.check(state)

    def _budget_stop(self, exc: BudgetExceeded) -> Stop:
        reason: StopReason = "deadline" if exc.limit == "max_seconds" else "budget"
        return Stop(reason, str(exc), limit=exc.limit)

    async def _run_blocks(
        self, repl: Repl, parsed: ParsedReply
    ) -> tuple[
        list[CodeExecution], list[str], FinalValue | None, Literal["code", "text"], str | None
    ]:
        executions: list[CodeExecution] = []
        outputs: list[str] = []
        last_error: str | None = None
        for index, block in enumerate(parsed.code_blocks, start=1):
            exec_id = new_id()
            await self.emit(
                CodeStarted(
                    **self._base(),
                    exec_id=exec_id,
                    iteration=self.iteration,
                    index=index,
                    code=block.code,
                )
            )
            self.current_exec_id = exec_id
            try:
                result = await repl.execute(block.code)
            finally:
                self.current_exec_id = None
            self.ledger.record_execution()
            if result.violation is not None:
                await self._violation(exec_id, result.violation, result.error)
            await self.emit(
                CodeExecuted(
                    **self._base(),
                    exec_id=exec_id,
                    iteration=self.iteration,
                    index=index,
                    code=block.code,
                    stdout=clip(result.stdout),
                    stderr=clip(result.stderr),
                    error=result.error,
                    duration_s=result.duration_s,
                    restarted=result.restarted,
                )
            )
            executions.append(_record(block.code, result))
            outputs.append(prompts.format_execution(index, result, self.config.max_output_chars))
            if result.error:
                last_error = result.error
            if result.final is not None:
                final = FinalValue(result.final, result.final_json)
                return executions, outputs, final, "code", last_error
            if self.fatal is not None:
                break
        return executions, outputs, None, "code", last_error

    async def _violation(self, exec_id: str | None, limit: str, message: str | None) -> None:
        await self.emit(
            ReplViolation(**self._base(), exec_id=exec_id, limit=limit, message=message or "")
        )

    async def _resolve_marker(
        self, repl: Repl, marker: FinalMarker
    ) -> tuple[FinalValue | None, str | None, str | None]:
        """(answer, note for the model when there is none, the variable a bare
        `FINAL(name)` was read from)."""
        name = marker.bare_name
        if name is not None:
            found = await repl.lookup_variable(name)
            if found.value is not None:
                return FinalValue(found.value, found.json), None, name
        if marker.kind == "answer":
            return FinalValue(marker.value), None, None
        lookup = await repl.lookup_variable(marker.value)
        if lookup.violation is not None:
            await self._violation(None, lookup.violation, lookup.error)
        if lookup.value is not None:
            return FinalValue(lookup.value, lookup.json), None, None
        return None, lookup.error, None

    async def _ask_for_final(self, repl: Repl, messages: list[Message]) -> Answer | None:
        """One last request for the answer when the run is out of iterations.

        Code in the reply runs first (a model may compute the answer there), in the same
        REPL and under the same budget; then the marker is resolved. Failing both, the
        reply's prose is the answer, flagged `from_prose`. With an output type, an
        answer that does not validate is no answer (no output rather than an invalid one).
        """
        parsing = self.config.parsing
        ask = prompts.LAST_ITERATION_TOOLS if parsing.tools() else prompts.LAST_ITERATION
        request = [*messages, Message("user", ask)]
        try:
            response = await self.call_model(
                self.model, self.model_info, request, purpose="final", tools=parsing.tools()
            )
        except (BudgetExceeded, ProviderError):
            return None
        _, _, final, _, _ = await self._run_blocks(repl, parsing.parse(response))
        if self.fatal is not None:
            raise self.fatal
        if final is None:
            marker = parsing.parse_last_answer(response)
            if marker is not None:
                final, _, self.resolved_variable = await self._resolve_marker(repl, marker)
        if final is None:
            prose = parsing.prose(response)
            final = FinalValue(prose) if prose else None
            self.from_prose = final is not None
        try:
            answer = self.output.accept(final) if final is not None else None
        except InvalidOutput:
            answer = None
        if answer is not None:
            await self.emit(
                FinalAnswer(
                    **self._base(),
                    answer=answer.text,
                    source="forced",
                    iteration=self.iteration,
                    resolved_variable=self.resolved_variable,
                    from_prose=self.from_prose,
                )
            )
        return answer

    def _result(
        self, answer: Answer | None, stop: Stop, error: BaseException | None = None
    ) -> RLMResult:
        snap = self.ledger.snapshot()
        return RLMResult(
            answer=answer.text if answer is not None else None,
            output=answer.value if answer is not None else None,
            tool_calls=snap.tool_calls,
            stop_reason=stop.reason,
            iterations=self.iteration,
            total_input_tokens=snap.usage.input_tokens,
            total_output_tokens=snap.usage.output_tokens,
            code_executions=snap.executions,
            sub_calls=snap.subcalls,
            history=tuple(self.history),
            usage=dict(snap.by_model),
            cost_usd=snap.cost_usd,
            duration_s=time.perf_counter() - self.started,
            run_id=self.run_id,
            limit=stop.limit,
            resolved_variable=self.resolved_variable if answer is not None else None,
            from_prose=self.from_prose and answer is not None,
            error=(
                f"{type(error).__name__}: {error}"
                if error is not None
                else (stop.detail if stop.reason == "error" else None)
            ),
        )

    # -- model calls ------------------------------------------------------------------

    async def call_model(
        self,
        model: Model,
        info: ModelInfo,
        messages: Sequence[Message],
        *,
        purpose: ModelPurpose,
        subcall_id: str | None = None,
        tools: tuple[ToolSpec, ...] = (),
        call_path: str | None = None,
    ) -> ModelResponse:
        """Every model call goes through here: budget, concurrency, events, usage.

        `call_path` names the call's place in the run tree (sub-calls pass theirs); root
        and final calls are named by the iteration. It reaches the model in
        `request.metadata["rlm.call_path"]`.
        """
        self.ledger.check()
        sent = list(messages)
        if sent and not sent[-1].cache_breakpoint:
            # Mark the end of this request so the next one, which repeats it as its
            # prefix, can be served from the provider's prompt cache.
            sent[-1] = replace(sent[-1], cache_breakpoint=True)
        if call_path is None:
            place = {"root": "", "final": "final", "compaction": "c"}.get(purpose, purpose)
            call_path = f"{self.path}#{place}{'' if purpose == 'final' else self.iteration}"
        request = ModelRequest(
            messages=tuple(sent),
            tools=tools,
            purpose=purpose,
            metadata={**self.request_metadata, "rlm.call_path": call_path},
        )
        call_id = new_id()
        async with self.shared.model_slots:
            self.ledger.check()
            await self.emit(
                ModelCallStarted(
                    **self._base(),
                    call_id=call_id,
                    model=info.name,
                    provider=info.provider,
                    purpose=purpose,
                    iteration=self.iteration if purpose != "subcall" else None,
                    subcall_id=subcall_id,
                    message_count=len(sent),
                    prompt_chars=sum(len(m.content) for m in sent),
                    last_message=clip(sent[-1].content) if sent else "",
                    server_address=info.server_address,
                    server_port=info.server_port,
                    temperature=(
                        request.temperature if request.temperature is not None else info.temperature
                    ),
                    max_tokens=request.max_output_tokens or info.max_output_tokens,
                    request=request,
                )
            )

            async def on_retry(details: RetryDetails) -> None:
                await self.emit(
                    ModelRetry(
                        **self._base(),
                        call_id=call_id,
                        model=details.model,
                        attempt=details.attempt,
                        wait_s=details.wait_s,
                        error_type=details.error_type,
                        error=details.error,
                    )
                )

            def finished(**outcome: Any) -> ModelCallFinished:
                return ModelCallFinished(
                    **self._base(),
                    call_id=call_id,
                    model=info.name,
                    provider=info.provider,
                    purpose=purpose,
                    subcall_id=subcall_id,
                    **outcome,
                )

            token = retry_listener.set(on_retry)
            started = time.perf_counter()
            try:
                response = await model.complete(request)
            except (Exception, KeyboardInterrupt, SystemExit) as exc:
                await self.emit(
                    finished(
                        latency_s=time.perf_counter() - started,
                        error_type=type(exc).__name__,
                        error=str(exc),
                    )
                )
                raise
            finally:
                retry_listener.reset(token)
        latency = time.perf_counter() - started
        usage = response.usage if response.usage.requests else replace(response.usage, requests=1)
        cost = self.ledger.record(info.name, usage)
        await self.emit(
            finished(
                response_model=response.model,
                response_id=response.id,
                usage=usage,
                cost_usd=cost,
                latency_s=latency,
                finish_reason=response.finish_reason,
                text=clip(response.text),
                text_chars=len(response.text),
                reply=response,
            )
        )
        return response

    # -- sub-calls ----------------------------------------------------------------------

    def child(self, prompt: str, model: Model, subcall_id: str, path: str) -> _Run:
        """A child run for `rlm_query`, sharing this run's tree (see `SubcallRouter`)."""
        return _Run(
            self.shared,
            self.ledger.child(),
            query=CHILD_QUERY,
            context=prompt,
            depth=self.depth + 1,
            model=model,
            parent_run_id=self.run_id,
            parent_subcall_id=subcall_id,
            path=path,
        )


def _record(code: str, result: ExecutionResult) -> CodeExecution:
    return CodeExecution(
        code=code,
        stdout=result.stdout,
        stderr=result.stderr,
        error=result.error,
        duration_s=result.duration_s,
        stdout_chars=result.stdout_chars,
        stderr_chars=result.stderr_chars,
        restarted=result.restarted,
    )
