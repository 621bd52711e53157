"""Recursion (`rlm_query`), budgets, deadlines and cancellation across a run tree."""

from __future__ import annotations

import asyncio

import pytest

import rlm
from rlm import Budget, ModelRequest
from rlm.events import Event, ModelCallFinished, RunFinished, RunStarted, SubcallStarted
from rlm.testing import FunctionModel, ScriptedModel


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def first_user(request: ModelRequest) -> str:
    return request.messages[1].content


def last_user(request: ModelRequest) -> str:
    return request.messages[-1].content


class Router:
    """A sub-model that plays child runs: the reply depends on the child's own context."""

    def __init__(self, name: str = "sub") -> None:
        self.model = FunctionModel(self.reply, name=name)

    def reply(self, request: ModelRequest) -> str:
        opening = first_user(request)
        turns = len(request.messages)
        if "GRANDCHILD" in opening:
            return "FINAL_VAR(x)" if turns > 2 else code("x = context.split(':')[1]")
        if "CHILD" in opening:
            if turns == 2:
                return code("r = rlm_query('GRANDCHILD:leafdata')\nprint(r)")
            return "FINAL(child got leafdata)"
        return "plain:" + last_user(request)[:20]


def test_depth_two_runs_a_child_with_its_own_repl() -> None:
    sub = ScriptedModel([code("print(context.upper())"), "FINAL(child answer)"], name="sub")
    root = ScriptedModel(
        [code("a = rlm_query('CHILD: hello')\nprint('got', a)"), "FINAL_VAR(a)"], name="root"
    )
    events: list[Event] = []
    result = rlm.run(
        "q", "ctx", model=root, sub_model=sub, max_depth=2, repl="inprocess", on_event=events.append
    )
    assert result.answer == "child answer"
    assert len(root.calls) == 2 and len(sub.calls) == 2
    # The child saw the prompt as its context, and printed it from its own REPL.
    assert "CHILD: HELLO" in last_user(sub.calls[1])
    assert "got child answer" in last_user(root.calls[1])
    # Usage of the child rolls up into the root's result, by model.
    assert result.usage["sub"].usage.requests == 2
    assert result.usage["root"].usage.requests == 2
    assert result.sub_calls == 1 and result.code_executions == 2
    starts = [e for e in events if isinstance(e, RunStarted)]
    assert [s.depth for s in starts] == [0, 1]
    assert starts[1].parent_run_id == starts[0].run_id
    sub_started = next(e for e in events if isinstance(e, SubcallStarted))
    assert starts[1].parent_subcall_id == sub_started.subcall_id and sub_started.recursive


def test_depth_three_and_exact_call_counts() -> None:
    router = Router()
    root = ScriptedModel([code("print(rlm_query('CHILD: go'))"), "FINAL(root done)"], name="root")
    events: list[Event] = []
    result = rlm.run(
        "q",
        "ctx",
        model=root,
        sub_model=router.model,
        max_depth=3,
        repl="inprocess",
        on_event=events.append,
    )
    assert result.answer == "root done"
    assert "child got leafdata" in last_user(root.calls[1])
    # child: 2 calls, grandchild: 2 calls
    assert len(router.model.calls) == 4
    finished = [e.result for e in events if isinstance(e, RunFinished)]
    assert [r.iterations for r in finished] == [2, 2, 2]
    assert result.usage["sub"].usage.requests == 4
    assert result.sub_calls == 2
    depths = sorted(e.depth for e in events if isinstance(e, RunStarted))
    assert depths == [0, 1, 2]


def test_at_the_depth_limit_rlm_query_is_a_plain_call() -> None:
    sub = FunctionModel(lambda r: "plain reply", name="sub")
    root = ScriptedModel([code("print(rlm_query('CHILD: x'))"), "FINAL(1)"])
    events: list[Event] = []
    rlm.run("q", "c", model=root, sub_model=sub, repl="inprocess", on_event=events.append)
    assert "plain reply" in last_user(root.calls[1])
    assert len(sub.calls) == 1 and sub.calls[0].purpose == "subcall"
    assert len(sub.calls[0].messages) == 1
    assert not [e for e in events if isinstance(e, RunStarted) and e.depth > 0]


def test_batched_child_runs_run_concurrently_and_keep_order() -> None:
    in_flight = peak = 0

    async def child(request: ModelRequest) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return code("FINAL(context[::-1])")

    root = ScriptedModel([code("print(rlm_query_batched(['ab', 'cd', 'ef', 'gh']))"), "FINAL(1)"])
    rlm.run(
        "q",
        "c",
        model=root,
        sub_model=FunctionModel(child),
        max_depth=2,
        max_concurrency=2,
        repl="inprocess",
    )
    assert "['ba', 'dc', 'fe', 'hg']" in last_user(root.calls[1])
    assert peak == 2


def test_oversized_subcall_is_refused_with_sizes() -> None:
    sub = FunctionModel(lambda r: "never", name="small", context_window=100)
    root = ScriptedModel([code("llm_query('x' * 5000)"), "FINAL(1)"])
    rlm.run("q", "c", model=root, sub_model=sub, repl="inprocess")
    told = last_user(root.calls[1])
    assert "5,000 characters" in told and "100 tokens" in told and "Split" in told
    assert sub.calls == []


def test_context_windows_override_and_prompt_states_the_limit() -> None:
    sub = FunctionModel(lambda r: "ok", name="sub")
    root = ScriptedModel([code("print(llm_query('y' * 500))"), "FINAL(1)"])
    rlm.run("q", "c", model=root, sub_model=sub, repl="inprocess", context_windows={"sub": 50})
    assert "500 characters" in last_user(root.calls[1])
    assert "180 characters" in root.calls[0].messages[0].content


def test_budget_hit_in_a_grandchild_stops_the_whole_tree() -> None:
    router = Router()
    root = ScriptedModel([code("print(rlm_query('CHILD: go'))"), "FINAL(never)"], name="root")
    events: list[Event] = []
    result = rlm.run(
        "q",
        "ctx",
        model=root,
        sub_model=router.model,
        max_depth=3,
        repl="inprocess",
        on_event=events.append,
        budget=Budget(max_tokens=1),
    )
    # The root's own first call already crosses the 1-token budget: nothing else starts.
    assert result.stop_reason == "budget" and result.limit == "max_tokens"
    assert result.answer is None
    assert len(root.calls) == 1
    assert all(not e.depth for e in events if isinstance(e, RunStarted))

    # A budget that only the grandchild crosses.
    router = Router()
    root = ScriptedModel([code("print(rlm_query('CHILD: go'))"), "FINAL(never)"], name="root")
    events = []
    probe = rlm.run("q", "ctx", model=ScriptedModel(["FINAL(x)"], name="root"), repl="inprocess")
    root_tokens = probe.total_input_tokens + probe.total_output_tokens
    result = rlm.run(
        "q",
        "ctx",
        model=root,
        sub_model=router.model,
        max_depth=3,
        repl="inprocess",
        on_event=events.append,
        budget=Budget(max_tokens=root_tokens + 900),
    )
    finished = {e.depth: e.result for e in events if isinstance(e, RunFinished)}
    assert finished[2].stop_reason == "budget"
    assert finished[1].stop_reason == "budget"
    assert result.stop_reason == "budget" and result.limit == "max_tokens"
    assert len(root.calls) == 1  # the root made no further call after the limit
    assert result.total_input_tokens + result.total_output_tokens >= root_tokens + 900


def test_max_subcalls_counts_calls_as_they_start() -> None:
    sub = FunctionModel(lambda r: "ok", name="sub")
    root = ScriptedModel([code("print(llm_query_batched(['a', 'b', 'c', 'd', 'e']))"), "FINAL(1)"])
    result = rlm.run(
        "q", "c", model=root, sub_model=sub, repl="inprocess", budget=Budget(max_subcalls=3)
    )
    assert len(sub.calls) == 3
    assert result.sub_calls == 3
    assert (result.stop_reason, result.limit) == ("budget", "max_subcalls")
    assert len(root.calls) == 1


def test_deadline_cancels_in_flight_calls() -> None:
    async def slow(request: ModelRequest) -> str:
        await asyncio.sleep(30)
        return "late"

    root = ScriptedModel([code("llm_query('slow')"), "FINAL(never)"])
    events: list[Event] = []
    result = rlm.run(
        "q",
        "c",
        model=root,
        sub_model=FunctionModel(slow, name="slow"),
        repl="inprocess",
        on_event=events.append,
        budget=Budget(max_seconds=0.3),
    )
    assert (result.stop_reason, result.limit) == ("deadline", "max_seconds")
    assert result.answer is None
    assert not [e for e in events if isinstance(e, ModelCallFinished) and e.model == "slow"]
    assert events[-1].kind == "run_finished"


def test_cost_budget_needs_prices() -> None:
    with pytest.raises(rlm.ConfigurationError, match="set_price"):
        rlm.run(
            "q", "c", model=ScriptedModel([]), repl="inprocess", budget=Budget(max_cost_usd=1.0)
        )


def test_cost_budget_stops_the_run() -> None:
    rlm.set_price("costly-test-model", rlm.Price(input=1_000_000.0, output=0.0))
    root = ScriptedModel([code("x = 1"), "FINAL(1)"], name="costly-test-model")
    result = rlm.run("q", "c", model=root, repl="inprocess", budget=Budget(max_cost_usd=5.0))
    assert (result.stop_reason, result.limit) == ("budget", "max_cost_usd")
    assert result.cost_usd is not None and result.cost_usd >= 5.0


def test_invalid_budget_values() -> None:
    with pytest.raises(rlm.ConfigurationError, match="max_tokens"):
        Budget(max_tokens=-1)


async def test_cancelling_mid_batch_stops_the_tree_with_a_complete_trajectory() -> None:
    started = asyncio.Event()
    seen: list[Event] = []

    def on_event(event: Event) -> None:
        seen.append(event)
        if sum(isinstance(e, SubcallStarted) for e in seen) == 6:
            started.set()

    async def slow(request: ModelRequest) -> str:
        await asyncio.sleep(30)
        return "late"

    root = ScriptedModel([code("print(llm_query_batched(['p'] * 6))"), "FINAL(never)"])
    task = asyncio.create_task(
        rlm.arun(
            "q",
            "c",
            model=root,
            sub_model=FunctionModel(slow),
            repl="inprocess",
            on_event=on_event,
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    last = seen[-1]
    assert isinstance(last, RunFinished) and last.result.stop_reason == "cancelled"
    assert last.result.sub_calls == 6
    assert not [
        e
        for e in seen
        if isinstance(e, ModelCallFinished) and e.purpose == "subcall" and e.error is None
    ]
