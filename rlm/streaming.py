"""`EventStream`: the events of one run, as `rlm.stream` and `RLM.stream` return them.

Why not an async generator: a generator cannot tell that the `async for` over it was left
(`break`, `return`, an exception in the loop's body). It is only closed when it is garbage
collected, so a caller that keeps a reference to it (`events = rlm.stream(...)`) kept the
run going, and paying for model calls, after leaving the loop. Here the object the loop
iterates is a cursor made by `__aiter__` that only the loop holds: leaving the loop drops
it, and dropping a cursor before the run ended cancels the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from rlm.events import Event
from rlm.result import RLMResult

Start = Callable[[Callable[[Event], None]], Coroutine[Any, Any, RLMResult]]


class EventStream:
    """The events of one run as they happen, ending with the root's `RunFinished`.

    ```python
    async for event in rlm.stream(query, context, model=model):
        ...
    ```

    The run starts when the loop starts. If it fails, its `RunFailed` event is yielded and
    then the error is raised. Leaving the loop early (break, return, an exception) cancels
    the run at once, even if the stream object is still referenced; its cleanup (REPL
    closed, `RunFinished` with `stop_reason="cancelled"` to other subscribers) then runs on
    the event loop. To wait for that cleanup, close the stream:
    `async with contextlib.aclosing(rlm.stream(...)) as events: async for event in events:`.
    A stream is iterated once.
    """

    def __init__(self, start: Start) -> None:
        self._start = start
        self._task: asyncio.Task[RLMResult] | None = None

    def __aiter__(self) -> _Cursor:
        if self._task is not None:
            raise RuntimeError("an EventStream is iterated once; call stream() again")
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.ensure_future(self._start(queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        task.add_done_callback(_retrieve)
        self._task = task
        return _Cursor(queue, task)

    def __iter__(self) -> NoReturn:
        # The events come from a run on an event loop: a plain `for` has none to wait on.
        raise TypeError(
            "an EventStream is iterated with `async for event in rlm.stream(...)` inside a "
            "coroutine; in blocking code pass on_event=callback to rlm.run(...) instead"
        )

    async def aclose(self) -> None:
        """Cancel the run if it is still going and wait until it has cleaned up."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


class _Cursor:
    """One pass over a stream's events; the run is cancelled when it is dropped early."""

    def __init__(self, queue: asyncio.Queue[Event | None], task: asyncio.Task[RLMResult]):
        self._queue = queue
        self._task = task
        self._done = False

    def __aiter__(self) -> _Cursor:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._done = True
            self._task.result()  # the run's error, if it failed
            raise StopAsyncIteration
        return event

    def __del__(self) -> None:
        if not self._task.done():
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                self._task.cancel()


def _retrieve(task: asyncio.Task[RLMResult]) -> None:
    # Nobody may await a run cancelled by a dropped cursor: mark its error as seen.
    if not task.cancelled():
        task.exception()
