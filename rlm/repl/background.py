"""A REPL that starts in the background while the run's first model call is made.

Starting the default REPL means starting a sandboxed Python worker: 40-70 ms on the CI
machine, more on a busy one. A run needs the REPL only once the model has written
code, so the engine starts it beside the first model call (hundreds of milliseconds for
a real model) instead of before it, and the first block waits only for what is left.

A start that fails is not left for the first block to find: a failure known at once
(no sandbox on this machine, a bad setting) is raised by `begin` as before, and one
found later (the first sandboxed worker cannot start) is handed to `on_failure`, which
ends the run with it, unless the run is already waiting for the REPL and gets it there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from rlm.repl.base import ExecutionResult, Repl, ReplHost, VariableLookup


class BackgroundStartRepl:
    """Wraps a `Repl` whose `start` runs as a task; every other call waits for it."""

    def __init__(self, repl: Repl, on_failure: Callable[[BaseException], None]) -> None:
        self.inner = repl
        self._on_failure = on_failure
        self._starting: asyncio.Task[None] | None = None
        self._waiting = 0
        self._closing = False

    async def begin(self, context: object, host: ReplHost) -> None:
        """Start the inner REPL in the background; raise what fails before it yields."""
        self._starting = asyncio.ensure_future(self.inner.start(context, host))
        await asyncio.sleep(0)  # let the start run up to its first wait: quick refusals
        if self._starting.done():
            self._starting.result()
        else:
            self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        # Nobody to tell when a block is waiting (it gets the error) or the run is over.
        if task.cancelled() or task.exception() is None or self._waiting or self._closing:
            return
        self._on_failure(task.exception())  # type: ignore[arg-type]

    async def _ready(self) -> Repl:
        if self._starting is None:
            raise RuntimeError("BackgroundStartRepl used before begin()")
        self._waiting += 1
        try:
            await asyncio.shield(self._starting)
        finally:
            self._waiting -= 1
        return self.inner

    # -- the Repl protocol ------------------------------------------------------------

    async def start(self, context: object, host: ReplHost) -> None:
        await self.begin(context, host)

    async def execute(self, code: str) -> ExecutionResult:
        return await (await self._ready()).execute(code)

    async def lookup_variable(self, name: str) -> VariableLookup:
        return await (await self._ready()).lookup_variable(name)

    async def close(self) -> None:
        self._closing = True
        starting = self._starting
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
        await self.inner.close()
