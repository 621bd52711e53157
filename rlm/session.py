"""`Session`: a conversation whose turns share one REPL.

```python
engine = rlm.RLM(model="openai/gpt-4o-mini")
with engine.session(context=docs) as chat:          # also: async with, rlm.Session(...)
    first = chat.run("Which customers churned in March?")
    second = chat.run("And how many of them were on the annual plan?")
    third = chat.run("Compare with this list", context=other)      # loaded as context_1
print(chat.usage, chat.cost_usd)
```

Each turn is an ordinary run of the engine (its own ledger, events and `RLMResult`) on
the session's REPL, which is started at the first turn and stopped when the session
closes: variables, imports and helper results stay from turn to turn. The REPL's helpers
reach the turn that is running through one forwarding host. A turn's opening message
carries the earlier queries and final answers (not their transcripts), the variables the
REPL holds (`SHOW_VARS()`, run before the turn; this is also how a worker that died
between turns is noticed and replaced, and the model told its variables are gone) and
the contexts: the first is `context`, later ones `context_1`, `context_2`, ...

The REPL lives on one event loop: `arun`/`stream` run on the loop of the first async
call; `run` (blocking) runs the turns on a thread of the session's own. Every event of a
turn, its child runs included, carries the session's `session_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from rlm import prompts
from rlm.budget import Budget, ModelUsage
from rlm.engine import RLM
from rlm.errors import ConfigurationError, RLMError, SessionError
from rlm.events import OnEvent, as_subscribers, new_id
from rlm.providers.base import Model, Usage
from rlm.repl.base import LLMQueryError, MultiContextRepl, Repl, ReplHost, ToolError, ToolStub
from rlm.result import RLMResult
from rlm.streaming import EventStream

T = TypeVar("T")

# Lists the REPL's variables before a later turn (and revives a dead worker).
_PROBE = "SHOW_VARS()"


class _TurnHost:
    """The REPL's host for the whole session: forwards the helpers and tools to the
    running turn. The tools are the engine's, the same for every turn."""

    def __init__(self, tool_stubs: Sequence[ToolStub]) -> None:
        self._target: ReplHost | None = None
        self._tool_stubs = tuple(tool_stubs)

    @property
    def tool_stubs(self) -> Sequence[ToolStub]:
        return self._tool_stubs

    def attach(self, host: ReplHost | None) -> None:
        self._target = host

    def _current(self) -> ReplHost:
        if self._target is None:
            raise LLMQueryError("no turn of the session is running, so no sub-call can be made")
        return self._target

    async def call_tool(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self._target is None:
            raise ToolError(f"no turn of the session is running, so {name}() cannot be called")
        return await self._target.call_tool(name, args, kwargs)

    async def llm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._current().llm_query(prompt, model)

    async def llm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return await self._current().llm_query_batched(prompts, model)

    async def rlm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._current().rlm_query(prompt, model)

    async def rlm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return await self._current().rlm_query_batched(prompts, model)


class _LoopThread:
    """An event loop on a thread of its own, for the blocking `Session.run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="rlm-session", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        # The handle is made in the caller's thread, so the turn runs in a copy of the
        # caller's contextvars (current span, structlog bindings).
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller stops the turn
            raise

    def stop(self) -> None:
        # What asyncio.run does at its end: close async generators (model clients made
        # for this loop close their connections there) and the default executor.
        for cleanup in (self.loop.shutdown_asyncgens, self.loop.shutdown_default_executor):
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Session:
    """A conversation with an `RLM`: turns share one REPL and see earlier answers.

    Args:
        engine: the configured `RLM` (or a model string/`Model`, for the defaults).
        context: the first context, `context` in the REPL. A session opened without
            one takes the first turn's `context=` as `context`.
        on_event: subscriber(s) for every event of every turn.
        budget: the limits of each turn (default: the engine's).

    Use it with `with`/`async with` (or call `close()`/`aclose()`): closing stops the
    REPL worker. One turn runs at a time; a second `run` while one is running raises
    `SessionError`.
    """

    def __init__(
        self,
        engine: RLM | str | Model,
        context: object = None,
        *,
        on_event: OnEvent = None,
        budget: Budget | None = None,
    ) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be an rlm.Budget, not {type(budget).__name__}")
        self.engine = engine if isinstance(engine, RLM) else RLM(engine)
        self.session_id = new_id()
        self.budget = budget
        self._subscribers = as_subscribers(on_event)
        self._context = context
        self._contexts: list[prompts.NamedContext] = []
        self._results: list[RLMResult] = []
        self._earlier: list[prompts.EarlierTurn] = []
        self._host = _TurnHost(self.engine.tool_stubs)
        self._repl: Repl | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: _LoopThread | None = None
        self._thread_lock = threading.Lock()
        self._busy = False
        self._running: asyncio.Task[Any] | None = None  # the task of the running turn
        self._closed = False

    # -- what the session did ----------------------------------------------------------

    @property
    def results(self) -> tuple[RLMResult, ...]:
        """Every turn's result, in order (turns that failed included, when they had one)."""
        return tuple(self._results)

    @property
    def contexts(self) -> tuple[str, ...]:
        """The names of the contexts loaded so far: `context`, `context_1`, ..."""
        return tuple(c.name for c in self._contexts)

    @property
    def usage(self) -> dict[str, ModelUsage]:
        """Tokens and cost by model, summed over every turn."""
        total: dict[str, ModelUsage] = {}
        for result in self._results:
            for name, entry in result.usage.items():
                seen = total.get(name)
                if seen is None:
                    total[name] = entry
                    continue
                cost = (
                    None
                    if seen.cost_usd is None or entry.cost_usd is None
                    else seen.cost_usd + entry.cost_usd
                )
                total[name] = ModelUsage(usage=seen.usage + entry.usage, cost_usd=cost)
        return total

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for entry in self.usage.values():
            total = total + entry.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """The cost of every turn; None when some model used has no known price."""
        total = 0.0
        for result in self._results:
            if result.cost_usd is None:
                return None
            total += result.cost_usd
        return total

    @property
    def closed(self) -> bool:
        return self._closed

    # -- turns -------------------------------------------------------------------------

    async def arun(
        self,
        query: str,
        *,
        context: object = None,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
    ) -> RLMResult:
        """Run one turn. `context=` adds a context for this and later turns;
        `output_type=` is the type this turn's answer must have (see `rlm.output`)."""
        self._bind(asyncio.get_running_loop())
        running = self._running
        if self._busy and running is not None and running.cancelling():
            # A turn that was cancelled (its stream's loop was left) is ending, not running
            # on: the next turn waits for its cleanup instead of being refused.
            await asyncio.wait([running])
        if self._busy:
            raise SessionError(
                "a turn of this session is already running: a session is one conversation, "
                "so wait for it (or open another session for parallel work)"
            )
        self._busy = True
        self._running = asyncio.current_task()
        try:
            return await self._turn(query, context, on_event, budget, output_type)
        finally:
            self._busy = False
            self._running = None

    def run(
        self,
        query: str,
        *,
        context: object = None,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
    ) -> RLMResult:
        """Blocking `arun`. Works inside a running event loop too (turns run on a thread)."""
        if self._closed:
            raise SessionError("this session is closed; open a new one with engine.session()")
        with self._thread_lock:  # two threads' first turns must not start two loops
            if self._thread is None:
                if self._loop is not None:
                    raise SessionError(
                        "this session runs on an event loop (it was used with await); keep "
                        "using `await chat.arun(...)`"
                    )
                self._thread = _LoopThread()
                self._loop = self._thread.loop
        if threading.current_thread() is self._thread.thread:
            raise SessionError(
                "chat.run() was called from inside one of the session's turns (an event "
                "subscriber?); a session runs one turn at a time"
            )
        return self._thread.call(
            self.arun(
                query, context=context, on_event=on_event, budget=budget, output_type=output_type
            )
        )

    def stream(
        self,
        query: str,
        *,
        context: object = None,
        on_event: OnEvent = None,
        budget: Budget | None = None,
        output_type: Any = None,
    ) -> EventStream:
        """The events of one turn as they happen, ending with its `RunFinished`; leaving
        the `async for` loop early cancels the turn (see `EventStream`)."""
        subscribers = as_subscribers(on_event)
        return EventStream(
            lambda listen: self.arun(
                query,
                context=context,
                on_event=[listen, *subscribers],
                budget=budget,
                output_type=output_type,
            )
        )

    async def _turn(
        self,
        query: str,
        context: object,
        on_event: OnEvent,
        budget: Budget | None,
        output_type: Any,
    ) -> RLMResult:
        if not isinstance(query, str) or not query.strip():
            raise ConfigurationError("query must be a non-empty string")
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be an rlm.Budget, not {type(budget).__name__}")
        self._contexts = [replace(c, new=False) for c in self._contexts]
        repl, replaced, variables = await self._prepare(context)
        turn = len(self._earlier) + 1
        preamble = prompts.session_preamble(
            turn=turn,
            contexts=self._contexts,
            earlier=self._earlier,
            variables=variables,
            worker_replaced=replaced,
        )
        try:
            result = await self.engine._arun_turn(
                query,
                self._context,
                session_id=self.session_id,
                repl=repl,
                attach=self._host.attach,
                preamble=preamble,
                contexts=prompts.contexts_note(self._contexts),
                on_event=[*self._subscribers, *as_subscribers(on_event)],
                budget=budget if budget is not None else self.budget,
                output_type=output_type,
            )
        except RLMError as exc:
            if exc.result is not None:
                self._record(query, exc.result)
            raise
        self._record(query, result)
        return result

    def _record(self, query: str, result: RLMResult) -> None:
        self._results.append(result)
        self._earlier.append(prompts.EarlierTurn(query, result.answer, result.stop_reason))

    async def _prepare(self, context: object) -> tuple[Repl, bool, str]:
        """The REPL for the next turn, started or checked, with `context` added; whether
        its worker was replaced since the last turn; its variables."""
        replaced, variables = False, ""
        if self._repl is None:
            if self._context is None and context is not None:
                self._context, context = context, None
            repl = self.engine._config.repl_factory()
            await repl.start(self._context, self._host)
            self._repl = repl
            self._contexts = [
                prompts.NamedContext("context", prompts.describe_context(self._context), True)
            ]
        else:
            probe = await self._repl.execute(_PROBE)
            replaced = probe.restarted
            variables = probe.stdout if probe.error is None else "(could not be listed)"
        if context is not None:
            if not isinstance(self._repl, MultiContextRepl):
                raise ConfigurationError(
                    f"{type(self._repl).__name__} cannot take another context during a "
                    "session (it has no add_context); pass every context when the "
                    "session opens, e.g. as a dict"
                )
            name = f"context_{len(self._contexts)}"
            await self._repl.add_context(name, context)
            self._contexts.append(
                prompts.NamedContext(name, prompts.describe_context(context), True)
            )
        return self._repl, replaced, variables

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            raise SessionError("this session is closed; open a new one with engine.session()")
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise SessionError(
                "this session's REPL lives on another event loop: run its turns with "
                "`chat.run(...)` from plain code, or `await chat.arun(...)` on the loop "
                "that ran its first turn"
            )

    # -- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the REPL worker. Safe to call twice."""
        loop = asyncio.get_running_loop()
        if self._thread is not None and loop is not self._thread.loop:
            await asyncio.to_thread(self.close)
            return
        if self._repl is not None and self._loop is not loop:
            raise SessionError(
                "this session's REPL lives on another event loop; close it there "
                "(`await chat.aclose()` on that loop)"
            )
        await self._close_repl()

    async def _close_repl(self) -> None:
        self._closed = True
        repl, self._repl = self._repl, None
        if repl is not None:
            await repl.close()

    def close(self) -> None:
        """Blocking `aclose` (for a session used with `with`/`run`). Safe to call twice."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            try:
                thread.call(self._close_repl())
            finally:
                thread.stop()
            return
        if self._repl is None or self._loop is None:
            self._closed = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or self._loop.is_running():
            raise SessionError(
                "this session runs on an event loop: close it with `await chat.aclose()` "
                "or use `async with`"
            )
        if self._loop.is_closed():
            raise SessionError(
                "the event loop this session ran on is closed, so its REPL cannot be "
                "stopped from here; close sessions with `async with` or `await chat.aclose()`"
            )
        self._loop.run_until_complete(self._close_repl())

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Session:
        self._bind(asyncio.get_running_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._busy else "open")
        return f"Session(id={self.session_id!r}, turns={len(self._results)}, {state})"
