"""Running a coroutine to completion from synchronous code, interruptibly.

Outside an event loop this is `asyncio.run` (whose Ctrl-C handling cancels the run). Inside
one (Jupyter, or sync code called from a coroutine) the coroutine runs on its own loop in
a helper thread, and the calling thread waits for it. `concurrent.futures` would leave a
Ctrl-C in the calling thread to wait for the run to end by itself; here anything that
interrupts the wait (KeyboardInterrupt, or a cancellation of the caller's task, which is
how `asyncio.run` reports the first Ctrl-C) cancels the run's task in the helper thread,
waits for it to clean up, and is then raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# How often the waiting thread looks whether its own task was cancelled.
_POLL_S = 0.1


def run_blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `make()` returns and give its result (or raise its exception)."""
    try:
        caller = asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    caller_task = asyncio.current_task(caller)
    cancels_before = caller_task.cancelling() if caller_task is not None else 0
    started = threading.Event()
    # Not Thread.join(): a KeyboardInterrupt inside join() leaves the Thread object
    # believing it has ended (CPython 3.11), so a second join() returns at once.
    finished = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> T:
        box["loop"] = asyncio.get_running_loop()
        box["task"] = asyncio.current_task()
        started.set()
        return await make()

    def thread() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()
            finished.set()

    # Threads do not inherit contextvars: carry the caller's (current span, structlog
    # bindings) into the run.
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(thread,), name="rlm-run", daemon=True)
    worker.start()
    try:
        while not finished.wait(_POLL_S):
            if caller_task is not None and caller_task.cancelling() > cancels_before:
                raise asyncio.CancelledError
    except BaseException:
        started.wait()
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: the run is over
                loop.call_soon_threadsafe(task.cancel)
        finished.wait()
        raise
    worker.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
