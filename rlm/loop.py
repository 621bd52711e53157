"""The loop: `_Run` is one run (its turns, its one model-call path, how it ends); child
runs are `_Run`s of the same tree, sharing its `_Shared` state.

`rlm.engine.RLM` builds the `_Config` and the root `_Run`. This module knows the
protocols (`Model`, `Repl`, `ParsingStrategy`, `TerminationStrategy`, event subscribers,
the ledger) and nothing concrete behind them: models are resolved and default
subscribers wired by the engine, usage is priced by the ledger. What a reply does (its
code, its final marker, the last-answer request) is in `rlm.replies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rlm import prompts
from rlm.budget import Ledger
from rlm.compaction import DEFAULT_COMPACTION_THRESHOLD, UNSUMMARISED, Compaction, Measured, measure
from rlm.errors import BudgetExceeded, ContextTooLongError, RLMError
from rlm.events import (
    Event,
    EventBus,
    FinalAnswer,
    IterationStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    new_id,
)
from rlm.fingerprint import context_fingerprint
from rlm.model_calls import call_model
from rlm.output import UNTYPED, Answer, InvalidOutput, OutputSpec
from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
    describe_model,
)
from rlm.repl.background import BackgroundStartRepl
from rlm.repl.base import Repl, ReplFactory, ReplHost
from rlm.replies import ask_for_final, resolve_marker, run_blocks
from rlm.result import Iteration, RLMResult, StopReason
from rlm.strategies.parsing import ParsingStrategy
from rlm.strategies.termination import (
    AnyOf,
    BudgetLimit,
    DeadlineLimit,
    FinalAnswerReached,
    MaxIterations,
    RunState,
    Stop,
    TerminationStrategy,
)
from rlm.subcalls import CHILD_QUERY, SubcallRouter, window_chars
from rlm.tools import RecordedTools, Tool, ToolDispatch

# The engine ends a run on these whatever termination strategy is configured.
_HARD_STOPS = AnyOf(FinalAnswerReached(), BudgetLimit(), DeadlineLimit(), MaxIterations())


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
    # `llm_query(model=...)`: a model name to a `Model` (the public face's registry).
    resolve_model: Callable[[str], Model]
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
    #: `describe_model` of each model used, by identity (the model kept alive with it):
    #: a batch describes its sub-model once, not once per sub-call.
    infos: dict[int, tuple[Model, ModelInfo]] = field(default_factory=dict)

    def describe(self, model: Model) -> ModelInfo:
        known = self.infos.get(id(model))
        if known is None or known[0] is not model:
            known = self.infos[id(model)] = (model, describe_model(model))
        return known[1]

    def child_slot(self, depth: int) -> asyncio.Semaphore:
        # One pool per depth: a run waiting for a child slot never holds a slot of the
        # pool its own children wait on, so nested batches cannot deadlock.
        if depth not in self.child_slots:
            self.child_slots[depth] = asyncio.Semaphore(self.config.max_concurrency)
        return self.child_slots[depth]


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
                # Started beside the first model call: the model needs it only once it
                # has written code (see rlm.repl.background).
                repl = BackgroundStartRepl(config.repl_factory(), on_failure=self.abort)
                await repl.begin(self.context, self.subcalls)
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
            # abort(): not a cancellation but the exception that caused it.
            if self.task is not None:
                self.task.uncancel()
            ending = self._failed(interrupt)
            raise self._with_result(interrupt) from interrupt.__cause__
        except Exception as exc:
            ending = self._failed(exc)
            if not isinstance(exc, RLMError):
                raise
            raise self._with_result(exc) from exc.__cause__
        except BaseException as exc:
            ending = self._failed(exc)
            raise
        finally:
            await self._finish(repl, ending, quiet=not ended)
        return result

    def _with_result(self, exc: BaseException) -> BaseException:
        """What the caller gets for `exc`: an `RLMError` carries this run's result."""
        if not isinstance(exc, RLMError):
            return exc
        # A copy: `exc` may be shared (a child run's error, a scripted step), and the
        # caller must get this run's result, not that of the first run that saw it.
        return exc.with_result(self._result(None, Stop("error", str(exc)), error=exc))

    def _failed(self, exc: BaseException) -> RunFailed:
        return RunFailed(**self._base(), error_type=type(exc).__name__, error=str(exc))

    def _cancelled(self) -> RLMResult:
        deadline_passed = self.ledger.budget.max_seconds is not None and (
            self.ledger.remaining_seconds() == 0
        )
        reason: StopReason = "deadline" if deadline_passed else "cancelled"
        return self._result(None, Stop(reason, "the run was cancelled"))

    def abort(self, exc: BaseException) -> None:
        """End the run with `exc`, raised on another task: a BaseException
        (KeyboardInterrupt, SystemExit...) from a sub-call's model or a subscriber, or
        the REPL's failure to start in the background. The run's task is cancelled, and
        `execute` raises `exc` instead of the cancellation."""
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
                    answer = await ask_for_final(self, repl, messages)
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
                response = await call_model(
                    self, self.model, self.model_info, messages, purpose="root", tools=tools
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
            executions, outputs, final, source, last_error = await run_blocks(self, repl, parsed)
            if final is None and parsed.final is not None:
                final, note, self.resolved_variable = await resolve_marker(self, repl, parsed.final)
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
            response = await call_model(
                self, self.model, self.model_info, request, purpose="compaction"
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

    @property
    def model_slots(self) -> asyncio.Semaphore:
        return self.shared.model_slots

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
