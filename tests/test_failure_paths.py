"""Every way a run can end leaves nothing behind and tells the truth (issue 18).

Runs use the default sandboxed REPL where a leak would be a worker process or its pipes,
and check processes and file descriptors, not only what `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from _leaks import Snapshot

import rlm
from rlm import Budget, ModelRequest
from rlm.errors import AuthenticationError
from rlm.events import (
    Event,
    ModelCallFinished,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
)
from rlm.repl import ReplLimits, SubprocessRepl
from rlm.testing import FunctionModel, ScriptedModel


class Custom(BaseException):
    """Not an Exception, not KeyboardInterrupt or SystemExit."""


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def endings(events: list[Event]) -> Counter[str]:
    """How many RunFinished/RunFailed each run emitted."""
    started = {e.run_id for e in events if isinstance(e, RunStarted)}
    counts = Counter({run_id: 0 for run_id in started})
    counts.update(e.run_id for e in events if isinstance(e, RunFinished | RunFailed))
    return counts


def assert_one_ending_each(events: list[Event]) -> None:
    counts = endings(events)
    assert counts and set(counts.values()) == {1}, counts
    assert isinstance(events[-1], RunFinished | RunFailed) and events[-1].depth == 0


@pytest.fixture
def clean() -> Iterator[Snapshot]:
    before = Snapshot.take()
    yield before
    before.assert_clean()


# -- 1. BaseExceptions -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, Custom])
def test_a_base_exception_from_the_model_closes_the_worker_and_ends_the_run(
    kind: type[BaseException], clean: Snapshot
) -> None:
    for _ in range(3):
        events: list[Event] = []
        model = ScriptedModel([code("x = 1"), kind("stop")])
        with pytest.raises(kind):
            rlm.run("q", "c", model=model, on_event=events.append)
        assert_one_ending_each(events)
        assert isinstance(events[-1], RunFailed) and events[-1].error_type == kind.__name__


def test_a_base_exception_from_a_sub_model_in_a_child_ends_every_run(clean: Snapshot) -> None:
    def sub(request: ModelRequest) -> str:
        if request.purpose == "subcall":
            raise KeyboardInterrupt
        return code("print(llm_query('deeper'))")

    events: list[Event] = []
    root = ScriptedModel([code("print(rlm_query('child'))"), "FINAL(never)"])
    with pytest.raises(KeyboardInterrupt):
        rlm.run(
            "q", "c", model=root, sub_model=FunctionModel(sub), max_depth=2, on_event=events.append
        )
    assert_one_ending_each(events)
    failed = [e for e in events if isinstance(e, RunFailed)]
    assert [e.depth for e in failed] == [1, 0]
    assert {e.error_type for e in failed} == {"KeyboardInterrupt"}
    subcalls = [e for e in events if isinstance(e, SubcallFinished)]
    assert len(subcalls) == 2 and not any(e.ok for e in subcalls)
    assert len(root.calls) == 1


@pytest.mark.parametrize("on", ["run_started", "code_executed", "subcall_started"])
def test_a_base_exception_from_a_subscriber_ends_the_run_and_others_see_the_end(
    on: str, clean: Snapshot
) -> None:
    def interrupting(event: Event) -> None:
        if event.kind == on:
            raise SystemExit(3)

    seen: list[Event] = []
    root = ScriptedModel([code("print(llm_query('p'))"), code("x = 2"), "FINAL(1)"])
    sub = FunctionModel(lambda request: "reply")
    with pytest.raises(SystemExit):
        rlm.run("q", "c", model=root, sub_model=sub, on_event=[interrupting, seen.append])
    assert_one_ending_each(seen)
    assert isinstance(seen[-1], RunFailed) and seen[-1].error_type == "SystemExit"
    assert len(root.calls) <= 1


# -- 2. Ctrl-C around rlm.run inside a running event loop ---------------------------------


def _interrupt_when(called: threading.Event) -> threading.Thread:
    def send() -> None:
        if called.wait(30):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _slow_model(called: threading.Event, cancelled: threading.Event) -> FunctionModel:
    async def slow(request: ModelRequest) -> str:
        called.set()
        try:
            await asyncio.sleep(20)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return code("x = 1")

    return FunctionModel(slow, name="slow")


@pytest.mark.parametrize("loop", ["asyncio.run", "bare loop"])
def test_ctrl_c_stops_run_called_inside_a_running_loop(loop: str, clean: Snapshot) -> None:
    called, cancelled = threading.Event(), threading.Event()
    model = _slow_model(called, cancelled)
    events: list[Event] = []

    async def notebook_cell() -> None:
        rlm.run("q", "c", model=model, on_event=events.append)

    sender = _interrupt_when(called)
    try:
        with pytest.raises(KeyboardInterrupt):
            if loop == "asyncio.run":  # its Ctrl-C handler cancels the cell's task
                asyncio.run(notebook_cell())
            else:  # Jupyter-like: KeyboardInterrupt raised in the calling thread
                bare = asyncio.new_event_loop()
                try:
                    bare.run_until_complete(notebook_cell())
                finally:
                    bare.close()
    finally:
        sender.join()
    assert cancelled.is_set()
    assert len(model.calls) == 1
    assert isinstance(events[-1], RunFinished)
    assert events[-1].result.stop_reason == "cancelled"


# -- 3. Cancelling while the worker starts -------------------------------------------------


def _set_on_start(started: asyncio.Event, event: Event) -> None:
    if isinstance(event, RunStarted):
        started.set()


async def test_cancelling_while_the_worker_starts_disposes_of_it(clean: Snapshot) -> None:
    factory = SubprocessRepl.factory(prestart=False)
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16):
        started = asyncio.Event()
        model = ScriptedModel([code("x = 1"), "FINAL(1)"], latency_s=5)
        task = asyncio.create_task(
            rlm.arun(
                "q",
                "c",
                model=model,
                repl=factory,
                on_event=functools.partial(_set_on_start, started),
            )
        )
        await started.wait()
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- 4. Only the deadline is a deadline -------------------------------------------------------


@pytest.mark.parametrize("budget", [None, Budget(max_seconds=60)])
def test_a_models_own_timeout_error_is_an_error(budget: Budget | None) -> None:
    events: list[Event] = []
    model = ScriptedModel([TimeoutError("the model's client timed out")])
    with pytest.raises(TimeoutError, match="client timed out"):
        rlm.run("q", "c", model=model, repl="inprocess", budget=budget, on_event=events.append)
    assert_one_ending_each(events)
    assert isinstance(events[-1], RunFailed) and events[-1].error_type == "TimeoutError"


def test_the_last_answer_request_respects_the_deadline() -> None:
    async def never(request: ModelRequest) -> str:
        await asyncio.sleep(30)
        return "FINAL(late)"

    model = ScriptedModel([code("x = 1"), never])
    events: list[Event] = []
    result = rlm.run(
        "q",
        "c",
        model=model,
        repl="inprocess",
        max_iterations=1,
        budget=Budget(max_seconds=0.5),
        on_event=events.append,
    )
    assert (result.stop_reason, result.limit, result.answer) == ("deadline", "max_seconds", None)
    assert model.calls[-1].purpose == "final"
    assert_one_ending_each(events)


# -- 5, 6. Failed sub-calls ---------------------------------------------------------------------


def test_a_sub_model_exception_is_a_failed_subcall() -> None:
    def broken(request: ModelRequest) -> str:
        raise ValueError("bad tokenizer state")

    events: list[Event] = []
    root = ScriptedModel([code("llm_query('x')"), "FINAL(1)"])
    rlm.run("q", "c", model=root, sub_model=FunctionModel(broken), on_event=events.append)
    (finished,) = [e for e in events if isinstance(e, SubcallFinished)]
    assert not finished.ok
    assert finished.error is not None and "ValueError: bad tokenizer state" in finished.error
    assert "LLMQueryError" in root.calls[1].messages[-1].content


def test_one_failed_prompt_of_a_batch_is_an_error_string_in_its_slot() -> None:
    def answer(request: ModelRequest) -> str:
        prompt = request.messages[-1].content
        if prompt == "p2":
            raise ValueError("cannot answer p2")
        return prompt.upper()

    events: list[Event] = []
    root = ScriptedModel(
        [code("print(llm_query_batched([f'p{i}' for i in range(5)]))"), "FINAL(1)"]
    )
    result = rlm.run(
        "q", "c", model=root, sub_model=FunctionModel(answer, name="sub"), on_event=events.append
    )
    feedback = root.calls[1].messages[-1].content
    assert "['P0', 'P1', '[error: ValueError: cannot answer p2]', 'P3', 'P4']" in feedback
    assert result.sub_calls == 5
    failed = [e for e in events if isinstance(e, SubcallFinished) and not e.ok]
    assert len(failed) == 1
    calls = [e for e in events if isinstance(e, ModelCallFinished) and e.usage is not None]
    assert result.total_input_tokens == sum(e.usage.input_tokens for e in calls if e.usage)


def test_a_batch_the_code_stopped_waiting_for_is_cancelled_not_paid_for(clean: Snapshot) -> None:
    in_flight = 0
    cancelled = 0
    cancelled_by_next_turn: list[int] = []

    async def slow(request: ModelRequest) -> str:
        nonlocal in_flight, cancelled
        in_flight += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        finally:
            in_flight -= 1
        return "late"

    async def next_turn(request: ModelRequest) -> str:
        await asyncio.sleep(0.3)  # let cancellations already requested land
        cancelled_by_next_turn.append(cancelled)
        return "FINAL(done)"

    events: list[Event] = []
    root = ScriptedModel([code("llm_query_batched(['a', 'b', 'c', 'd'])"), next_turn])
    factory = SubprocessRepl.factory(limits=ReplLimits(wall_seconds=1, grace_seconds=1))
    result = rlm.run(
        "q", "c", model=root, sub_model=FunctionModel(slow), repl=factory, on_event=events.append
    )
    assert result.answer == "done"
    assert cancelled_by_next_turn == [4]
    subcalls = [e for e in events if isinstance(e, SubcallFinished)]
    assert len(subcalls) == 4 and all(e.error == "cancelled" for e in subcalls)
    assert set(result.usage) == {"scripted"}


# -- 7. A failed child run ------------------------------------------------------------------


def test_a_failed_child_runs_error_carries_the_roots_result(clean: Snapshot) -> None:
    events: list[Event] = []
    denied = AuthenticationError("key revoked")
    root = ScriptedModel([code("print(rlm_query('child'))"), "FINAL(never)"], name="root")
    child = ScriptedModel([denied], name="child")
    with pytest.raises(AuthenticationError, match="key revoked") as info:
        rlm.run("q", "c", model=root, sub_model=child, max_depth=2, on_event=events.append)
    root_id = next(e.run_id for e in events if isinstance(e, RunStarted) and e.depth == 0)
    result = info.value.result
    assert result is not None and result.run_id == root_id
    assert result.stop_reason == "error" and result.iterations == 1
    assert "root" in result.usage and result.total_input_tokens > 0
    assert denied.result is None  # the child's exception object is not changed
    assert_one_ending_each(events)


def test_an_exception_raised_twice_carries_each_runs_own_result() -> None:
    shared = AuthenticationError("key revoked")
    model = ScriptedModel([shared, shared])
    engine = rlm.RLM(model, repl="inprocess")
    ids = []
    for _ in range(2):
        with pytest.raises(AuthenticationError) as info:
            engine.run("q", "c")
        assert info.value.result is not None
        ids.append(info.value.result.run_id)
    assert ids[0] != ids[1]


# -- Leaving a stream --------------------------------------------------------------------------


async def test_leaving_a_stream_cancels_the_run_while_it_is_still_referenced(
    clean: Snapshot,
) -> None:
    model = ScriptedModel([code(f"x = {i}") for i in range(20)], latency_s=0.05)
    seen: list[Event] = []
    events = rlm.stream("q", "c", model=model, on_event=seen.append)
    async for event in events:
        if event.kind == "code_executed":
            break
    for _ in range(50):  # the cancelled run cleans up on the loop
        if seen and isinstance(seen[-1], RunFinished):
            break
        await asyncio.sleep(0.05)
    assert isinstance(seen[-1], RunFinished) and seen[-1].result.stop_reason == "cancelled"
    assert len(model.calls) <= 2
    del events


async def test_aclosing_a_stream_waits_for_the_cleanup(clean: Snapshot) -> None:
    model = ScriptedModel([code(f"x = {i}") for i in range(20)], latency_s=0.05)
    seen: list[Event] = []
    async with contextlib.aclosing(rlm.stream("q", "c", model=model, on_event=seen.append)) as es:
        async for event in es:
            if event.kind == "iteration_started":
                break
    assert isinstance(seen[-1], RunFinished) and seen[-1].result.stop_reason == "cancelled"
    assert len(model.calls) == 1
