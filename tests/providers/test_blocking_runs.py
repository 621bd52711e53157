"""Blocking runs on one thread share an event loop, so a model's connections serve them all.

The tests with a model drive the real SDK clients against the fake server and count the
connections it saw opened and still open; the others check what a kept loop must still
do as `asyncio.run` did (contextvars, leftover tasks, Ctrl-C, threads, fork).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import multiprocessing
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rlm
from rlm import _sync
from rlm._sync import close_thread_loop, run_blocking
from rlm.providers import RetryPolicy
from rlm.testing.server import ErrorReply, FakeLLMServer

ModelFactory = Callable[..., Any]

ANSWER = ["FINAL(done)"]
FAST_NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture(autouse=True)
def _own_loop() -> Iterator[None]:
    # Each test starts and ends with no loop kept on this thread.
    close_thread_loop()
    yield
    close_thread_loop()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_blocking_runs_on_a_thread_reuse_the_models_connection(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model()
    for _ in range(3):
        server.push(*ANSWER)
        assert rlm.run("q", "ctx", model=model, repl="inprocess").answer == "done"

    assert len(server.requests) == 3
    assert server.connections_opened == 1
    assert server.open_connections == 1  # kept for the next run

    close_thread_loop()
    assert wait_for(lambda: server.open_connections == 0)


def test_a_thread_closes_its_connections_when_it_ends(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model()
    answers: list[str | None] = []

    def worker() -> None:
        for _ in range(2):
            server.push(*ANSWER)
            answers.append(rlm.run("q", "ctx", model=model, repl="inprocess").answer)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()

    assert answers == ["done", "done"]
    assert server.connections_opened == 1
    assert wait_for(lambda: server.open_connections == 0)


def test_each_thread_has_its_own_connections(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model()
    server.push(*ANSWER * 4)
    barrier = threading.Barrier(2)

    def worker() -> None:
        barrier.wait()
        for _ in range(2):
            rlm.run("q", "ctx", model=model, repl="inprocess")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(server.requests) == 4
    assert server.connections_opened == 2


def test_a_dropped_model_is_freed_and_its_client_closed_by_a_later_run(
    make_model: ModelFactory, server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.push(*ANSWER * 2)
    first = make_model()
    rlm.run("q", "ctx", model=first, repl="inprocess")
    dropped = weakref.ref(first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del first
        gc.collect()
        # The loop kept for the thread holds nothing of the finished run.
        assert dropped() is None
        rlm.run("q", "ctx", model=make_model(), repl="inprocess")
        gc.collect()

    # The dropped model's connection was closed during the second run, as a client is
    # closed (aiohttp reports none unclosed); the second model's stays open for its next
    # run.
    assert server.connections_opened == 2
    assert wait_for(lambda: server.open_connections == 1)
    assert not [w for w in caught if "nclosed" in str(w.message)]
    assert "nclosed" not in caplog.text


def test_ctrl_c_closes_the_threads_loop_and_its_connections(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model()
    server.push(*ANSWER)
    rlm.run("q", "ctx", model=model, repl="inprocess")
    assert server.open_connections == 1

    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_blocking(interrupted)

    assert wait_for(lambda: server.open_connections == 0)
    server.push(*ANSWER)
    assert rlm.run("q", "ctx", model=model, repl="inprocess").answer == "done"
    assert server.connections_opened == 2


def test_each_run_sees_the_callers_context_variables() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        return var.get()

    seen = []
    for value in ("first", "second"):
        var.set(value)
        seen.append(run_blocking(read))
    assert seen == ["first", "second"]


def test_tasks_a_run_leaves_behind_are_cancelled_when_it_returns() -> None:
    started: list[asyncio.Task[None]] = []

    async def leave_a_task() -> str:
        started.append(asyncio.ensure_future(asyncio.sleep(3600)))
        await asyncio.sleep(0)
        return "returned"

    assert run_blocking(leave_a_task) == "returned"
    assert started[0].cancelled()


def _child_run(base_url: str, queue: multiprocessing.Queue[str]) -> None:
    from rlm.providers.openai import OpenAIModel

    model = OpenAIModel("gpt-4o-mini", base_url=base_url, api_key="test")
    try:
        queue.put(str(rlm.run("q", "ctx", model=model, repl="inprocess").answer))
    except BaseException as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def test_a_forked_child_gets_its_own_loop(server: FakeLLMServer) -> None:
    from rlm.providers.openai import OpenAIModel

    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url, api_key="test")
    server.push(*ANSWER * 3)
    rlm.run("q", "ctx", model=model, repl="inprocess")

    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_child_run, args=(server.openai_base_url, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == "done"

    # The parent's loop and connection are untouched by the child.
    assert rlm.run("q", "ctx", model=model, repl="inprocess").answer == "done"
    assert server.connections_opened == 2


def test_a_model_dropped_in_a_running_loop_has_its_client_closed_there(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    async def main() -> bool:
        model = make_model()
        server.push(*ANSWER)
        await rlm.arun("q", "ctx", model=model, repl="inprocess")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del model
            gc.collect()
        assert not [w for w in caught if "nclosed" in str(w.message)]
        for _ in range(200):
            if server.open_connections == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    # The application's loop goes on running: the close is not left to its shutdown.
    assert asyncio.run(main())


def test_ctrl_c_while_leftovers_are_cancelled_still_closes_the_loop() -> None:
    left: list[asyncio.Future[None]] = []

    async def leave_a_stubborn_task() -> str:
        async def stubborn() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise KeyboardInterrupt from None  # as a second Ctrl-C would arrive

        left.append(asyncio.ensure_future(stubborn()))
        await asyncio.sleep(0)
        return "returned"

    with pytest.raises(KeyboardInterrupt):
        run_blocking(leave_a_stubborn_task)
    loops_after = [loop for loop in _sync._open if not loop.loop.is_closed()]
    assert loops_after == []

    async def fine() -> str:
        return "fine"

    assert run_blocking(fine) == "fine"  # on a new loop


def test_a_thread_keeps_no_executor_threads_between_runs() -> None:
    async def uses_the_default_executor() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: 7)

    before = {t.ident for t in threading.enumerate()}
    assert run_blocking(uses_the_default_executor) == 7
    # The executor's thread ends with the run; the loop stays for the next one.
    assert wait_for(lambda: {t.ident for t in threading.enumerate()} <= before)
    assert _sync._local.loop.loop.is_closed() is False


def test_threads_that_ended_leave_no_thread_objects_behind() -> None:
    async def uses_the_default_executor() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: 1)

    before = {t.ident for t in threading.enumerate()}
    threads = [
        threading.Thread(target=run_blocking, args=(uses_the_default_executor,)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert wait_for(lambda: {t.ident for t in threading.enumerate()} <= before)


def test_a_model_lets_go_of_the_loops_it_ran_on(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_run() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await rlm.arun("q", "ctx", model=model, repl="inprocess")

    for _ in range(3):
        server.push(*ANSWER)
        asyncio.run(one_run())
    gc.collect()

    # Each loop closed the model's client for it; no later loop is kept (the first
    # one's client is `model.client`, closed, which still names its loop).
    assert [ref() for ref in loops[1:]] == [None, None]
    assert wait_for(lambda: server.open_connections == 0)


def test_ctrl_c_does_not_wait_for_a_task_that_ignores_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sync, "CLOSE_WAIT_S", 0.2)
    left: list[asyncio.Future[None]] = []

    async def interrupted() -> None:
        async def stubborn() -> None:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)

        left.append(asyncio.ensure_future(stubborn()))
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            run_blocking(interrupted)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(30)  # it used to wait for the task for ever
    assert not thread.is_alive()
    assert isinstance(outcome[0], KeyboardInterrupt)


def test_a_kept_exception_does_not_keep_an_ended_threads_connections(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    model = make_model(retry=FAST_NO_RETRY)
    server.push(ErrorReply(400, "no"))
    kept: list[BaseException] = []

    def worker() -> None:
        try:
            rlm.run("q", "ctx", model=model, repl="inprocess")
        except Exception as exc:  # kept, traceback and all, past the thread's end
            kept.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()

    assert kept and server.connections_opened == 1
    assert wait_for(lambda: server.open_connections == 0)
