"""`InProcessRepl`: runs the model's code in this process. Fast; NOT a security boundary.

Use it for trusted models and code, tests and notebooks. The code can read this
process's memory, files, environment (API keys included) and network, and an infinite
loop in it cannot be stopped (the run can be cancelled, the thread cannot). For code you
do not trust, use the default `SubprocessRepl`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from rlm.repl.base import (
    ExecutionResult,
    LLMQueryError,
    ReplHost,
    ToolError,
    VariableLookup,
    host_tools,
)
from rlm.repl.namespace import Namespace, SubcallFunctions, outside_capture
from rlm.repl.output import OutputBuffer

T = TypeVar("T")


class InProcessRepl:
    """A namespace in this process; each block runs on the REPL's own thread.

    The thread lets the event loop keep serving sub-calls while the model's code waits on
    them: helpers hand their coroutine to the loop and block the REPL thread, not the loop.
    """

    def __init__(self, *, capture_chars: int = 2_000_000) -> None:
        self._capture_chars = capture_chars
        self._namespace: Namespace | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: ReplHost | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._closed = False

    async def start(self, context: object, host: ReplHost) -> None:
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rlm-repl"
        )
        self._namespace = Namespace(
            context,
            SubcallFunctions(
                llm_query=lambda p, m: self._call(host.llm_query(p, m)),
                llm_query_batched=lambda ps, m: self._call(host.llm_query_batched(ps, m)),
                rlm_query=lambda p, m: self._call(host.rlm_query(p, m)),
                rlm_query_batched=lambda ps, m: self._call(host.rlm_query_batched(ps, m)),
                call_tool=lambda n, a, k: self._call(host.call_tool(n, a, k), ToolError),
            ),
            host_tools(host),
        )

    async def add_context(self, name: str, value: object) -> None:
        if self._namespace is None:
            raise RuntimeError("InProcessRepl.add_context() called before start()")
        self._namespace.add_context(name, value)

    def _call(self, coro: Coroutine[Any, Any, T], error: type[RuntimeError] = LLMQueryError) -> T:
        """Run `coro` on the engine's loop and wait for it from the REPL thread."""
        assert self._loop is not None
        if self._closed:
            coro.close()
            raise error("the run is over; no more sub-calls or tool calls can be made")
        future: concurrent.futures.Future[T] = outside_capture(
            asyncio.run_coroutine_threadsafe, coro, self._loop
        )
        with self._pending_lock:
            self._pending.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise error("the run was cancelled while this call was running") from None
        finally:
            with self._pending_lock:
                self._pending.discard(future)

    async def execute(self, code: str) -> ExecutionResult:
        if self._namespace is None or self._executor is None:
            raise RuntimeError("InProcessRepl.execute() called before start()")
        namespace = self._namespace
        half = self._capture_chars // 2
        stdout, stderr = OutputBuffer(half, half), OutputBuffer(half, half)
        started = time.perf_counter()
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            self._executor, ctx.run, namespace.run, code, stdout, stderr
        )
        return ExecutionResult(
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
            error=outcome.error,
            duration_s=time.perf_counter() - started,
            final=outcome.final,
            final_json=outcome.final_json,
            stdout_chars=stdout.total_chars,
            stderr_chars=stderr.total_chars,
        )

    async def lookup_variable(self, name: str) -> VariableLookup:
        if self._namespace is None:
            raise RuntimeError("InProcessRepl.lookup_variable() called before start()")
        found = self._namespace.lookup(name)
        return VariableLookup(value=found.value, error=found.error, json=found.json)

    async def close(self) -> None:
        self._closed = True
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()
        if self._executor is not None:
            # Do not wait: a block stuck in an endless loop must not hang the caller.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._namespace = None
