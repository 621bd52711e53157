"""Batches on the local executor: order, failures, restart, the shared budget, cancellation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import rlm
from rlm.errors import ConfigurationError, ProviderError
from rlm.providers.base import ModelRequest
from rlm.telemetry.trajectory import load_trajectory
from rlm.testing import FunctionModel

CODE = "```repl\nn = len(context)\nprint(n)\n```"


def query_of(request: ModelRequest) -> str:
    """The item's query, as the first user message quotes it."""
    first = next(m.content for m in request.messages if m.role == "user")
    return first.splitlines()[0].removeprefix("Query: ")


def two_turns(request: ModelRequest) -> str:
    """Turn 1 measures the context, turn 2 answers with the item's query and that size."""
    if len(request.messages) <= 2:
        return CODE
    output = request.messages[-1].content
    size = next(word for word in output.split() if word.isdigit())  # what the code printed
    return f"FINAL({query_of(request)}:{size})"


def items(n: int) -> list[rlm.BatchItem]:
    return [rlm.BatchItem(query=f"q-{i}", context="x" * i, id=f"item-{i}") for i in range(n)]


async def test_results_come_back_in_input_order_whatever_order_runs_finish() -> None:
    async def slower_first(request: ModelRequest) -> str:
        index = int(query_of(request).split("-")[1])
        await asyncio.sleep(0.01 * (6 - index))  # item 0 is the slowest
        return two_turns(request)

    finished: list[str] = []
    report = await rlm.abatch(
        items(6),
        model=FunctionModel(slower_first),
        repl="inprocess",
        max_parallel_runs=6,
        on_event=lambda e: (
            finished.append(e.result.answer or "")
            if isinstance(e, rlm.events.RunFinished)
            else None
        ),
    )
    assert report.answers == [f"q-{i}:{i}" for i in range(6)]
    assert report.ids == tuple(f"item-{i}" for i in range(6))
    assert finished != report.answers  # they did finish out of order
    assert report.failed == () and report.not_run == ()
    assert report.usage["function"].usage.requests == 12


async def test_a_failing_item_is_recorded_with_its_partial_result_and_the_rest_go_on() -> None:
    def flaky(request: ModelRequest) -> str:
        if query_of(request) == "q-2" and len(request.messages) > 2:
            raise ProviderError("the provider fell over", model="function")
        return two_turns(request)

    report = await rlm.abatch(items(4), model=FunctionModel(flaky), repl="inprocess")
    assert [f.id for f in report.failed] == ["item-2"]
    failure = report.failed[0]
    assert "the provider fell over" in failure.error
    assert failure.result is not None and failure.result.stop_reason == "error"
    assert failure.result.code_executions == 1  # the first turn's work is kept
    assert report.results[2] is failure.result
    assert report.answers[:2] == ["q-0:0", "q-1:1"] and report.answers[3] == "q-3:3"


async def test_a_restart_skips_finished_items_and_reads_them_back(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = await rlm.abatch(
        items(4), model=FunctionModel(two_turns), repl="inprocess", results=out
    )
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    by_id = {json.loads(line)["id"]: line for line in lines}
    # A crash while the third result was being written: two whole lines and half a line.
    out.write_text(by_id["item-0"] + by_id["item-1"] + by_id["item-2"][:40])

    seen: list[str] = []

    def recording(request: ModelRequest) -> str:
        seen.append(query_of(request))
        return two_turns(request)

    second = await rlm.abatch(
        items(4), model=FunctionModel(recording), repl="inprocess", results=out
    )
    assert sorted(set(seen)) == ["q-2", "q-3"]
    assert second.resumed == 2
    assert second.results[:2] == first.results[:2]  # the same RLMResults, read from the file
    assert second.answers == first.answers
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["item-0", "item-1", "item-2", "item-3"]

    third = await rlm.abatch(
        items(4), model=FunctionModel(recording), repl="inprocess", results=out
    )
    assert third.resumed == 4 and len(seen) == 4  # nothing ran again


async def test_the_total_budget_stops_concurrent_runs_at_the_limit() -> None:
    calls = 0

    async def never_done(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.005)
        return "```repl\nprint(1)\n```"

    model = FunctionModel(never_done)
    limit = 6_000
    report = await rlm.abatch(
        items(10),
        model=model,
        repl="inprocess",
        max_parallel_runs=4,
        max_iterations=50,
        budget=rlm.Budget(max_tokens=100_000),  # per run: far away
        total_budget=rlm.Budget(max_tokens=limit),
    )
    spent = report.total_usage.total_tokens
    biggest_call = max(len(str(r.messages)) for r in model.calls)  # chars >= tokens
    assert limit <= spent <= limit + 4 * biggest_call  # at most the calls in flight
    ran = [r for r in report.results if r is not None]
    assert ran and all(r.stop_reason == "budget" for r in ran)
    assert set(report.stopped) == {i for i, r in zip(report.ids, report.results, strict=True) if r}
    assert report.not_run  # the budget ran out before every item started
    assert len(ran) + len(report.not_run) == 10


async def test_a_shared_ledger_limits_concurrent_arun_calls_outside_a_batch() -> None:
    tenant = rlm.Ledger(rlm.Budget(max_tokens=3_000))
    model = FunctionModel(lambda _: "```repl\nprint(1)\n```", latency_s=0.002)
    results = await asyncio.gather(
        *(rlm.arun(f"q-{i}", "ctx", model=model, repl="inprocess", ledger=tenant) for i in range(3))
    )
    assert all(r.stop_reason == "budget" for r in results)
    assert tenant.snapshot().usage.total_tokens == sum(r.total_usage.total_tokens for r in results)


async def test_a_batch_counts_in_a_ledger_the_caller_keeps() -> None:
    # batch's docstring: `ledger=rlm.Ledger(...)` instead of total_budget shares a ledger.
    tenant = rlm.Ledger(rlm.Budget(max_tokens=1_000_000))
    report = await rlm.abatch(items(3), FunctionModel(two_turns), repl="inprocess", ledger=tenant)
    assert report.answers == ["q-0:0", "q-1:1", "q-2:2"]
    assert tenant.snapshot().usage.total_tokens == report.total_usage.total_tokens > 0
    engine = rlm.RLM(FunctionModel(two_turns), repl="inprocess")
    again = engine.batch(items(2), ledger=tenant)
    assert tenant.snapshot().usage.total_tokens == (
        report.total_usage.total_tokens + again.total_usage.total_tokens
    )
    with pytest.raises(ConfigurationError, match="not both"):
        rlm.batch(items(1), FunctionModel(two_turns), ledger=tenant, total_budget=rlm.Budget())


async def test_cancelling_stops_every_run_and_keeps_finished_results(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    release = asyncio.Event()  # never set: the slow items wait until cancelled
    calls_after_cancel: list[str] = []
    cancelled = False

    async def fast_or_stuck(request: ModelRequest) -> str:
        query = query_of(request)
        if cancelled:
            calls_after_cancel.append(query)
        if query in ("q-0", "q-1"):
            return two_turns(request)
        await release.wait()
        return "FINAL(never)"

    events: list[rlm.Event] = []
    task = asyncio.ensure_future(
        rlm.abatch(
            items(6),
            model=FunctionModel(fast_or_stuck),
            repl="inprocess",
            max_parallel_runs=6,
            results=out,
            on_event=events.append,
        )
    )
    for _ in range(500):
        await asyncio.sleep(0.01)
        if out.exists() and len(out.read_text().splitlines()) == 2:
            break
    cancelled = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["item-0", "item-1"]
    stops = [e.result.stop_reason for e in events if isinstance(e, rlm.events.RunFinished)]
    assert sorted(stops) == ["cancelled"] * 4 + ["final"] * 2
    assert calls_after_cancel == []


async def test_one_trajectory_per_item_in_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    report = await rlm.abatch(
        [*items(2), rlm.BatchItem("q-9", "ctx", id="a/b c")],
        model=FunctionModel(two_turns),
        repl="inprocess",
        trajectories=folder,
    )
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 3 and "item-0.jsonl" in files
    loaded = load_trajectory(folder / "item-1.jsonl")
    assert loaded.result is not None and loaded.result.answer == report.answers[1]


def test_sync_batch_and_rlm_batch_take_the_same_items() -> None:
    engine = rlm.RLM(FunctionModel(two_turns), repl="inprocess")
    report = engine.batch(items(3), max_parallel_runs=2)
    assert report.answers == ["q-0:0", "q-1:1", "q-2:2"]
    plain = rlm.batch(items(3), FunctionModel(two_turns), repl="inprocess")
    assert plain.answers == report.answers


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    model = FunctionModel(two_turns)
    with pytest.raises(ConfigurationError, match="unexpected argument"):
        rlm.batch(items(1), model, max_paralel_runs=2)
    with pytest.raises(ConfigurationError, match="unexpected argument"):
        rlm.RLM(model).batch(items(1), max_iterations=3)
    with pytest.raises(ConfigurationError, match="unique"):
        rlm.batch([rlm.BatchItem("q-1", "", id="a"), rlm.BatchItem("q-2", "", id="a")], model)
    with pytest.raises(ConfigurationError, match="BatchItem"):
        rlm.batch(["q-1"], model)  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="needs prices"):
        rlm.batch(items(1), model, total_budget=rlm.Budget(max_cost_usd=1.0))
    with pytest.raises(ConfigurationError, match="executor"):
        rlm.batch(items(1), model, executor="spark")  # type: ignore[arg-type]
    assert model.calls == []


def double(x: int) -> int:
    """Twice x."""
    return 2 * x


async def test_new_run_arguments_pass_through_to_every_run() -> None:
    model = FunctionModel(lambda _: "```repl\nFINAL(double(21))\n```")
    report = await rlm.abatch(
        items(2), model, repl="inprocess", tools=[double], output_type=int, max_iterations=3
    )
    assert report.answers == ["42", "42"]
    assert [r.output for r in report.results if r is not None] == [42, 42]


def test_results_read_back_from_the_file_have_the_output_type(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass
    class Size:
        n: int

    def sized(request: ModelRequest) -> str:
        if len(request.messages) <= 2:
            return "```repl\nx = {'n': len(context)}\n```"
        return "FINAL_VAR(x)"

    out = tmp_path / "out.jsonl"
    model = FunctionModel(sized)
    first = rlm.batch(items(2), model, repl="inprocess", results=out, output_type=Size)
    calls = len(model.calls)
    again = rlm.batch(items(3), model, repl="inprocess", results=out, output_type=Size)
    assert len(model.calls) - calls == 2  # only the new item ran
    assert first.results[1] is not None and again.results[1] is not None
    assert [r.output for r in again.results if r] == [Size(0), Size(1), Size(2)]
    engine = rlm.RLM(model, repl="inprocess", output_type=Size)
    assert [r.output for r in engine.batch(items(3), results=out).results if r][1] == Size(1)
