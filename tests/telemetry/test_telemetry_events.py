"""The event stream the sinks feed on: isolation, ordering, failures, streaming, JSON."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlm
from rlm.events import (
    EVENT_TYPES,
    Event,
    IterationStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    event_from_json,
    event_to_json,
)
from rlm.providers.base import ModelRequest
from rlm.testing import FunctionModel, ScriptedModel
from tests.telemetry.conftest import TREE_CODE


def test_a_subscriber_that_raises_does_not_break_the_run(caplog):
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    async def broken_async(event: Event) -> None:
        raise ValueError("async subscriber bug")

    result = rlm.run(
        "q",
        "c",
        model=ScriptedModel(["```repl\nprint(1)\n```", "FINAL(fine)"]),
        repl="inprocess",
        on_event=[broken, broken_async, lambda e: seen.append(e.kind)],
    )
    assert result.answer == "fine"
    assert seen[0] == "run_started" and seen[-1] == "run_finished"
    warnings = [r for r in caplog.records if r.name == "rlm" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 * len(seen)


async def test_async_subscribers_are_awaited_in_order():
    seen: list[str] = []

    async def slow(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(event.kind)

    await rlm.RLM(ScriptedModel(["FINAL(1)"]), repl="inprocess").arun("q", "c", on_event=slow)
    assert seen == [
        "run_started",
        "iteration_started",
        "model_call_started",
        "model_call_finished",
        "final_answer",
        "run_finished",
    ]


def _answer_for(request: ModelRequest) -> str:
    """Each run echoes the number in its query, after one round trip through the REPL."""
    first = request.messages[1].content
    number = re.search(r"question (\d+)", first)
    assert number is not None
    if len(request.messages) == 2:
        return f"```repl\nn = {number.group(1)}\nprint(n * 2)\n```"
    return f"FINAL({number.group(1)})"


async def test_a_hundred_concurrent_runs_keep_their_events_apart():
    engine = rlm.RLM(FunctionModel(_answer_for, latency_s=0.001), repl="inprocess")
    shared: list[Event] = []
    per_call: dict[int, list[Event]] = {i: [] for i in range(100)}

    async def one(i: int) -> rlm.RLMResult:
        return await engine.arun(f"question {i}", "c", on_event=[per_call[i].append, shared.append])

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert [r.answer for r in results] == [str(i) for i in range(100)]
    expected_kinds = [
        "run_started",
        "iteration_started",
        "model_call_started",
        "model_call_finished",
        "code_started",
        "code_executed",
        "iteration_started",
        "model_call_started",
        "model_call_finished",
        "final_answer",
        "run_finished",
    ]
    for i, result in enumerate(results):
        events = per_call[i]
        assert {e.run_id for e in events} == {result.run_id}
        assert [e.kind for e in events] == expected_kinds
        assert isinstance(events[0], RunStarted) and events[0].query == f"question {i}"
        # The shared stream has the same events for this run, in the same order.
        assert [e for e in shared if e.run_id == result.run_id] == events
        stamps = [e.timestamp for e in events]
        assert stamps == sorted(stamps)
    # The runs really did overlap: the shared stream is interleaved.
    first_run = results[0].run_id
    assert [e.run_id for e in shared[: len(expected_kinds)]] != [first_run] * len(expected_kinds)


async def test_stream_yields_events_and_ends_with_run_finished():
    events = [
        e
        async for e in rlm.stream(
            "q", "c", model=ScriptedModel(["```repl\nprint(2)\n```", "FINAL(2)"]), repl="inprocess"
        )
    ]
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)
    assert events[-1].result.answer == "2"
    assert sum(isinstance(e, IterationStarted) for e in events) == 2


async def test_stream_raises_after_yielding_run_failed():
    events: list[Event] = []
    model = ScriptedModel(["```repl\nprint(1)\n```", rlm.errors.AuthenticationError("bad key")])
    with pytest.raises(rlm.errors.AuthenticationError, match="bad key"):
        async for event in rlm.stream("q", "c", model=model, repl="inprocess"):
            events.append(event)
    assert isinstance(events[-1], RunFailed)
    assert events[-1].error_type == "AuthenticationError"


def shout(text: str) -> str:
    """A tool for the run below."""
    return text.upper()


def test_events_from_a_real_run_survive_json(tree):
    _, sub = tree
    root = ScriptedModel([TREE_CODE, "```repl\nprint(shout('hi'))\n```", "FINAL(all done)"])
    events: list[Event] = []
    rlm.run(
        "q",
        "ctx",
        model=root,
        sub_model=sub,
        max_depth=2,
        repl="inprocess",
        on_event=events.append,
        tools=[shout],
    )
    rare = {"model_retry", "run_failed", "repl_violation", "history_compacted"}
    assert {e.kind for e in events} >= set(EVENT_TYPES) - rare
    for event in events:
        assert event_from_json(event_to_json(event)) == event


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def any_event(kind: str) -> st.SearchStrategy[Event]:
    if kind == "run_finished":
        # A result's `output` is whatever the answer was: JSON values in a trajectory.
        result = st.builds(rlm.RLMResult, output=JSON_VALUES)
        return st.builds(RunFinished, result=result)
    return st.builds(EVENT_TYPES[kind])


@settings(max_examples=300)
@given(st.sampled_from(sorted(EVENT_TYPES)).flatmap(any_event))
def test_every_event_type_round_trips_through_json(event: Event):
    text = event_to_json(event)
    back = event_from_json(text)
    assert type(back) is type(event)
    assert event_to_json(back) == text
    if "NaN" not in text:  # NaN is never equal to itself
        assert back == event
