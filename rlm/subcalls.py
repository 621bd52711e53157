"""Sub-call routing: the engine side of `llm_query`, `rlm_query` and their batched forms.

One `SubcallRouter` per run is the `ReplHost` its REPL calls back into (tool calls are
handed on to the run's `rlm.tools.ToolDispatch`). It resolves the
sub-model, checks the prompt against the model's window, counts the sub-call against the
budget, emits `SubcallStarted`/`SubcallFinished`, and sends the prompt either to a model
(through the run's one model-call path) or to a child run. It knows the run only through
the `SubcallOwner` protocol, so it does not import the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rlm import prompts
from rlm.errors import (
    AuthenticationError,
    BudgetExceeded,
    ConfigurationError,
    MissingAPIKeyError,
    ProviderError,
    RLMError,
)
from rlm.events import SubcallFinished, SubcallStarted, clip, new_id
from rlm.model_calls import ModelCallRun, call_model
from rlm.providers.base import Message, Model, ModelInfo
from rlm.repl.base import LLMQueryError, ToolError, ToolStub
from rlm.result import RLMResult
from rlm.tools import ToolDispatch

CHARS_PER_TOKEN = 4
# Share of a sub-model's window a prompt may fill; the rest is left for the reply.
PROMPT_WINDOW_SHARE = 0.9

CHILD_QUERY = (
    "Your parent run sent you a prompt, loaded as `context` (preview below). Do what it "
    "asks, using the data it contains, and give the result with FINAL."
)


def window_chars(window_tokens: int) -> int:
    """The largest prompt, in characters, a sub-call may send to a window of this size."""
    return int(window_tokens * CHARS_PER_TOKEN * PROMPT_WINDOW_SHARE)


class SubcallConfig(Protocol):
    """The run tree's settings the router reads."""

    @property
    def model(self) -> Model: ...

    @property
    def sub_model(self) -> Model: ...

    @property
    def max_depth(self) -> int: ...

    @property
    def max_concurrency(self) -> int: ...

    @property
    def context_windows(self) -> Mapping[str, int]: ...

    @property
    def resolve_model(self) -> Callable[[str], Model]:
        """A model name (`llm_query(model=...)`) to a `Model`."""
        ...


class SubcallShared(Protocol):
    """What the router uses of the state every run in one tree shares."""

    @property
    def models(self) -> dict[str, Model]: ...

    def child_slot(self, depth: int) -> asyncio.Semaphore: ...

    def describe(self, model: Model) -> ModelInfo:
        """`describe_model(model)`, worked out once per model and run tree."""
        ...


class ChildRun(Protocol):
    """A child run as the router sees it."""

    @property
    def run_id(self) -> str: ...

    async def execute(self) -> RLMResult: ...


class SubcallOwner(ModelCallRun, Protocol):
    """The run a router belongs to."""

    fatal: BaseException | None

    @property
    def config(self) -> SubcallConfig: ...

    @property
    def shared(self) -> SubcallShared: ...

    @property
    def depth(self) -> int: ...

    @property
    def current_exec_id(self) -> str | None: ...

    def child(self, prompt: str, model: Model, subcall_id: str, path: str) -> ChildRun: ...

    def abort(self, exc: BaseException) -> None: ...


class SubcallRouter:
    """The `ReplHost` of one run: every sub-call and tool call its code makes goes
    through here (tool calls on to `rlm.tools.ToolDispatch`)."""

    def __init__(self, run: SubcallOwner, tools: ToolDispatch | None = None) -> None:
        self.run = run
        self.tools = tools
        self.tasks: set[asyncio.Task[Any]] = set()
        self._calls = 0

    def _next_slot(self) -> str:
        """A name for the next helper call of this run ("s1", "s2", ...): the code asks
        for them one at a time, so the same code names them the same on every run."""
        self._calls += 1
        return f"s{self._calls}"

    @property
    def tool_stubs(self) -> Sequence[ToolStub]:
        return self.tools.stubs if self.tools is not None else ()

    async def call_tool(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.tools is None:
            raise ToolError(f"there is no tool named {name!r}")
        # Tracked like a sub-call, so the run's end cancels it and waits for its events.
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            path = f"{self.run.path}/{self._next_slot()}"
            return await self.tools.call(name, args, kwargs, call_path=path)
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def llm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._subcall(prompt, model, recursive=False, slot=self._next_slot())

    async def rlm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._subcall(prompt, model, recursive=True, slot=self._next_slot())

    async def llm_query_batched(
        self, prompts_: Sequence[str], model: str | None = None
    ) -> list[str]:
        return await self._batch(prompts_, model, recursive=False)

    async def rlm_query_batched(
        self, prompts_: Sequence[str], model: str | None = None
    ) -> list[str]:
        return await self._batch(prompts_, model, recursive=True)

    async def cancel_pending(self) -> None:
        """Cancel sub-calls still running (deadline, cancellation) and wait for them, so
        that no event of this run arrives after its RunFinished."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks if not t.done() and t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)

    def window_tokens(self, info: ModelInfo) -> int | None:
        return self.run.config.context_windows.get(info.name, info.context_window)

    async def _batch(self, items: Sequence[str], model: str | None, recursive: bool) -> list[str]:
        replies = [""] * len(items)
        pending = iter(range(len(items)))  # shared: each index is taken by one worker
        slot = self._next_slot()

        async def worker() -> None:
            for index in pending:
                try:
                    replies[index] = await self._subcall(
                        items[index], model, recursive, (index, len(items)), f"{slot}.{index}"
                    )
                except LLMQueryError as exc:
                    replies[index] = f"[error: {exc}]"

        # Concurrency is enforced where the work happens (model-call and child-run
        # slots, shared run-wide); the workers only keep a large batch from starting
        # every sub-call at once, which would put a task, an event and a queued slot
        # waiter per prompt ahead of the first request, and show sub-calls in telemetry
        # as started while they wait.
        tasks = [
            asyncio.ensure_future(worker())
            for _ in range(min(len(items), self.run.config.max_concurrency))
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Whatever ends the batch early, nothing of it goes on (and is paid for)
            # after the code has moved on.
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        return replies

    def _sub_model(self, name: str | None) -> Model:
        config = self.run.config
        if name is None:
            return config.sub_model
        cache = self.run.shared.models
        if name not in cache:
            if name in (config.model.name, config.sub_model.name):
                cache[name] = config.sub_model if name == config.sub_model.name else config.model
            else:
                try:
                    cache[name] = config.resolve_model(name)
                except ConfigurationError as exc:
                    raise LLMQueryError(str(exc)) from None
        return cache[name]

    async def _subcall(
        self,
        prompt: str,
        model_name: str | None,
        recursive: bool,
        batch: tuple[int, int] | None = None,
        slot: str = "s0",
    ) -> str:
        try:
            return await self._route(prompt, model_name, recursive, batch, slot)
        except (LLMQueryError, asyncio.CancelledError):
            raise
        except BaseException as exc:
            # KeyboardInterrupt & co. from a model or a subscriber, on a task of the REPL's:
            # raised there it would escape to the event loop. The run raises it instead.
            self.run.abort(exc)
            raise LLMQueryError(f"{type(exc).__name__}: {exc}") from None

    async def _route(
        self,
        prompt: str,
        model_name: str | None,
        recursive: bool,
        batch: tuple[int, int] | None,
        slot: str,
    ) -> str:
        run = self.run
        model = self._sub_model(model_name)
        info = run.shared.describe(model)
        recursive = recursive and run.depth + 1 < run.config.max_depth
        try:
            run.ledger.start_subcall()
        except BudgetExceeded as exc:
            raise LLMQueryError(f"sub-call not made: {exc}") from None
        subcall_id = new_id()
        path = f"{run.path}/{slot}"
        started = time.perf_counter()
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        await run.emit(
            SubcallStarted(
                **run._base(),
                subcall_id=subcall_id,
                exec_id=run.current_exec_id,
                recursive=recursive,
                model=info.name,
                prompt=clip(prompt),
                prompt_chars=len(prompt),
                batch_index=batch[0] if batch else None,
                batch_size=batch[1] if batch else None,
            )
        )
        child_run_id: str | None = None
        text = ""
        error: str | None = None
        try:
            if recursive:
                child_run_id, text = await self._child_run(prompt, model, subcall_id, path)
            else:
                window = self.window_tokens(info)
                if window is not None and len(prompt) > window_chars(window):
                    raise LLMQueryError(
                        prompts.subcall_too_large(
                            len(prompt), info.name, window, window_chars(window)
                        )
                    )
                response = await call_model(
                    run,
                    model,
                    info,
                    # Marked as call_model would mark it, without copying it there.
                    [Message("user", prompt, cache_breakpoint=True)],
                    purpose="subcall",
                    subcall_id=subcall_id,
                    call_path=path,
                )
                text = response.text
        except LLMQueryError as exc:
            error = str(exc)
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        except BudgetExceeded as exc:
            error = f"sub-call not made: {exc}"
            raise LLMQueryError(error) from None
        except (AuthenticationError, MissingAPIKeyError) as exc:
            # Not something the model's code can fix: end the run after this block.
            run.fatal = run.fatal or exc
            error = f"{type(exc).__name__}: {exc}"
            raise LLMQueryError(error) from None
        except ProviderError as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise LLMQueryError(error) from None
        except RLMError as exc:
            run.fatal = run.fatal or exc
            error = f"{type(exc).__name__}: {exc}"
            raise LLMQueryError(error) from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise LLMQueryError(error) from None
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await run.emit(
                SubcallFinished(
                    **run._base(),
                    subcall_id=subcall_id,
                    ok=error is None,
                    response=clip(text),
                    response_chars=len(text),
                    error=error,
                    duration_s=time.perf_counter() - started,
                    child_run_id=child_run_id,
                )
            )
            if task is not None:
                self.tasks.discard(task)
        return text

    async def _child_run(
        self, prompt: str, model: Model, subcall_id: str, path: str
    ) -> tuple[str, str]:
        async with self.run.shared.child_slot(self.run.depth + 1):
            child = self.run.child(prompt, model, subcall_id, path)
            result = await child.execute()
        if result.answer is None:
            raise LLMQueryError(
                f"the child run stopped without an answer ({result.stop_reason}"
                f"{': ' + result.error if result.error else ''})"
            )
        return child.run_id, result.answer
