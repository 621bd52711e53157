"""Running a coroutine to completion from synchronous code, interruptibly.

Outside an event loop, each thread keeps one event loop (an `asyncio.Runner`) for the
blocking calls it makes, so the SDK clients rlm builds for that loop, and their open
connections, serve the thread's next runs too: a sync application that calls `rlm.run`
again and again does not open a new connection (a TLS handshake, against a remote API)
for every model call of every run. Apart from that a call behaves as `asyncio.run`: the
coroutine runs in a copy of the caller's contextvars, Ctrl-C cancels it, and tasks it
leaves behind are cancelled when it returns; each run has a default executor of its own.
Idle connections stay open until the thread's next run, which drops those idle for more
than `providers.http.IDLE_EXPIRY_S` (aiohttp does when it looks for one), as a sync HTTP
client's pool would; the loop and its clients are closed when the thread ends, at
interpreter exit, and after any `BaseException` that is not an `Exception` (Ctrl-C).

Inside a running loop (Jupyter, or sync code called from a coroutine) the coroutine runs
on its own loop in a helper thread, and the calling thread waits for it.
`concurrent.futures` would leave a Ctrl-C in the calling thread to wait for the run to
end by itself; here anything that interrupts the wait (KeyboardInterrupt, or a
cancellation of the caller's task, which is how `asyncio.run` reports the first Ctrl-C)
cancels the run's task in the helper thread, waits for it to clean up, and is then
raised.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import threading
import weakref
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
        return _thread_loop().run(make())
    return _run_on_helper_thread(make, caller)


#: Seconds a closing loop waits for what its runs left (a task that ignores its
#: cancellation, a client's close) before it is closed anyway.
CLOSE_WAIT_S = 5.0


class _ThreadLoop:
    """The event loop one thread reuses for its blocking calls."""

    def __init__(self) -> None:
        # No global side effect: with a loop factory the runner does not make its loop
        # the thread's current loop (`asyncio.get_event_loop()`) as `asyncio.run` does.
        loop = asyncio.new_event_loop()
        self.loop = loop
        self.runner = asyncio.Runner(loop_factory=lambda: loop)
        self.pid = os.getpid()
        self.owner = weakref.ref(threading.current_thread())
        _open.add(self)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        # The default executor (DNS look-ups, `run_in_executor(None, ...)`) is the run's,
        # shut down (without waiting) after it: no idle thread waits for the next run.
        executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="rlm-loop")
        self.loop.set_default_executor(executor)
        try:
            # A fresh copy of the caller's contextvars for each call (the runner's own
            # context would be the first caller's, kept from call to call).
            result = self.runner.run(coro, context=contextvars.copy_context())
        except Exception:
            self._after_run(executor)
            raise
        except BaseException:
            # Ctrl-C (or SystemExit) may have stopped the loop part-way: end it as
            # `asyncio.run` does, cancelling what is left and closing its clients, but
            # without waiting long for a task that ignores its cancellation.
            self.close()
            raise
        self._after_run(executor)
        return result

    def _after_run(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        try:
            self._finish_leftovers()
        except BaseException:
            self.close()  # a Ctrl-C while leftovers are cancelled
            raise
        finally:
            executor.shutdown(wait=False)

    def _finish_leftovers(self, timeout: float | None = None) -> None:
        """Cancel the tasks a run left, as `asyncio.run` does, and wait for them."""
        loop = self.loop
        # One turn of the loop first: a dropped model's client close is queued, from
        # wherever the model was collected, as a callback that makes its task.
        loop.run_until_complete(asyncio.sleep(0))
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not tasks:
            return
        for task in tasks:
            # Closing a dropped model's client (an async generator's `aclose()`) is
            # finished, not cancelled.
            if type(task.get_coro()).__name__ != "async_generator_athrow":
                task.cancel()
        loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception in a task left by a blocking run",
                        "exception": task.exception(),
                        "task": task,
                    }
                )

    def close(self) -> None:
        _open.discard(self)
        if _local.__dict__.get("loop") is self:
            del _local.loop
            del _local.closer
        self._shut_down()

    def _shut_down(self) -> None:
        loop = self.loop
        if os.getpid() != self.pid or loop.is_closed() or loop.is_running():
            return  # a forked copy's loop and sockets are the parent's
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return  # not from inside another loop: left to its own thread's end or exit
        try:
            with contextlib.suppress(Exception):
                # Clients of models dropped since the last run are closed, not cancelled.
                self._finish_leftovers(CLOSE_WAIT_S)
            with contextlib.suppress(Exception):
                # The clients still held (their suspended closers) close their connections.
                shutdown = asyncio.wait_for(loop.shutdown_asyncgens(), CLOSE_WAIT_S)
                loop.run_until_complete(shutdown)
        finally:
            # Not `shutdown_default_executor()`, which starts a thread (this may run
            # while a thread ends); each run's executor was shut down after it.
            with contextlib.suppress(Exception):
                loop.close()


class _CloseAtThreadEnd:
    """Held only by the thread-local, so it goes when its thread ends, even if a kept
    exception's traceback still holds the `_ThreadLoop`."""

    __slots__ = ("loop",)

    def __init__(self, loop: _ThreadLoop) -> None:
        self.loop = loop

    def __del__(self) -> None:
        _open.discard(self.loop)
        self.loop._shut_down()


_local = threading.local()
_open: weakref.WeakSet[_ThreadLoop] = weakref.WeakSet()
# Loops a forked child inherited: kept referenced so that nothing in the child finalizes
# (and closes) the parent's selector and sockets.
_inherited: list[object] = []


def _thread_loop() -> _ThreadLoop:
    loop: _ThreadLoop | None = _local.__dict__.get("loop")
    if loop is None or loop.loop.is_closed():
        loop = _local.loop = _ThreadLoop()
        _local.closer = _CloseAtThreadEnd(loop)
    return loop


def close_thread_loop() -> None:
    """Close the event loop this thread reuses for blocking runs, and the connections of
    the clients built on it (a later blocking run makes a new one)."""
    loop: _ThreadLoop | None = _local.__dict__.get("loop")
    if loop is not None:
        loop.close()


def _close_all() -> None:
    # At interpreter exit: this thread's loop, and those of threads that have ended.
    # A daemon thread still alive may be inside a run on its own.
    here = threading.current_thread()
    for loop in list(_open):
        owner = loop.owner()
        if owner is None or owner is here or not owner.is_alive():
            loop.close()


def _forget_after_fork() -> None:
    global _local, _open
    _inherited.append((_local, list(_open)))
    _local = threading.local()
    _open = weakref.WeakSet()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)


def _run_on_helper_thread(
    make: Callable[[], Coroutine[Any, Any, T]], caller: asyncio.AbstractEventLoop
) -> T:
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
