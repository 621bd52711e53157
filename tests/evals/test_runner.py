"""`rlm.evals.runner`: tasks through an RLM and a direct model, scored, as a table."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from rlm.evals import get_task
from rlm.evals.runner import evaluate, format_table, summary
from rlm.events import event_from_json
from rlm.providers.base import ModelRequest
from rlm.testing import FunctionModel

NIAH_CODE = """\
```repl
import asyncio
import re
key = re.search(r"magic number for (\\S+) mentioned", {query!r})[1]
found = re.search(r"magic numbers for " + re.escape(key) + r" is: (\\d+)", context)
FINAL(found[1] if found else "not found")
```"""


def niah_solver() -> FunctionModel:
    def reply(request: ModelRequest) -> str:
        query = re.search(r"Query: (.*)", request.messages[1].content)
        assert query
        return NIAH_CODE.format(query=query[1])

    return FunctionModel(reply, name="niah-solver")


async def test_niah_through_the_rlm_and_a_direct_model_with_a_small_window(
    tmp_path: Path,
) -> None:
    direct_calls: list[ModelRequest] = []

    def direct(request: ModelRequest) -> str:
        direct_calls.append(request)
        return "I could not find it."

    reader = FunctionModel(direct, name="small-window", context_window=3_000)
    rows = await evaluate(
        get_task("niah"),
        model=niah_solver(),
        sizes=[1_000, 8_000],
        direct=True,
        direct_model=reader,
        repl="inprocess",
        trajectory_dir=tmp_path,
    )
    assert [r.size for r in rows] == [1_000, 8_000]
    assert all(r.rlm.score == 1.0 and r.rlm.answer == r.expected for r in rows)
    small, large = rows
    assert small.direct is not None and small.direct.score == 0.0
    assert small.direct.answer == "I could not find it."
    assert large.direct is not None and large.direct.answer is None
    assert large.direct.error is not None and "context too long" in large.direct.error
    assert len(direct_calls) == 1  # the prompt that cannot fit is never sent
    assert [r.winner for r in rows] == ["RLM", "RLM"]

    files = sorted(p.name for p in tmp_path.glob("*.jsonl"))  # noqa: ASYNC240
    assert files == ["niah-1000-seed0.jsonl", "niah-8000-seed0.jsonl"]
    last = (tmp_path / files[0]).read_text().splitlines()[-1]
    assert event_from_json(last).kind == "run_finished"

    table = format_table(rows)
    assert table.splitlines()[0].startswith("| tokens | context chars | expected |")
    assert "(context too long)" in table
    assert "winner: RLM 2, direct 0, tie 0" in table
    stats = summary(rows)
    assert stats["rlm"]["mean_score"] == 1.0 and stats["direct"]["mean_score"] == 0.0


async def test_failed_attempts_score_zero_and_the_evaluation_goes_on() -> None:
    def broken(request: ModelRequest) -> str:
        raise RuntimeError("the model crashed")

    rows = await evaluate(
        get_task("salary"),
        model=FunctionModel(lambda req: "FINAL(12)", name="guesser"),
        sizes=[20],
        runs=2,
        direct=True,
        direct_model=FunctionModel(broken, name="broken"),
        repl="inprocess",
    )
    assert len(rows) == 2
    for row in rows:
        assert row.rlm.answer == "12" and row.rlm.score == 0.0
        assert row.direct is not None and row.direct.answer is None
        assert row.direct.error == "RuntimeError: the model crashed"
        assert row.winner == "tie"
    assert "| (failed: RuntimeError: the" in format_table(rows)


def test_pairs_rows_show_pair_counts() -> None:
    from rlm.evals.runner import Attempt, EvalRow

    instance = get_task("oolong-pairs").generate(4_000, seed=1)
    n = len(instance.gold.splitlines())
    row = EvalRow(
        task=instance.task,
        size=instance.size,
        size_unit="tokens",
        seed=1,
        run=1,
        context_chars=instance.context_chars,
        context_tokens=instance.context_tokens,
        expected=instance.gold,
        answer_kind="pairs",
        rlm=Attempt(model="m", answer="(1, 2)\n(3, 4)", score=0.0, cost_usd=None, duration_s=1.5),
    )
    table = format_table([row])
    assert f"| {n} pairs | 2 pairs | 0.00 | n/a | 1.5 s |" in table


@pytest.mark.parametrize("name", ["salary", "niah", "oolong", "oolong-pairs"])
def test_default_sizes_are_valid(name: str) -> None:
    task = get_task(name)
    for size in task.default_sizes:
        task.check_size(size)


async def test_an_executor_runs_the_rlm_attempts_as_one_batch(tmp_path: Path) -> None:
    in_flight = 0
    most = 0

    async def solver(request: ModelRequest) -> str:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return niah_solver()._fn(request)  # type: ignore[return-value]

    rows = await evaluate(
        get_task("niah"),
        model=FunctionModel(solver, name="niah-solver"),
        sizes=[1_000, 2_000],
        runs=2,
        repl="inprocess",
        trajectory_dir=tmp_path,
        executor="local",
        max_parallel_runs=4,
    )
    assert [(r.size, r.run) for r in rows] == [(1_000, 1), (1_000, 2), (2_000, 1), (2_000, 2)]
    assert all(r.rlm.score == 1.0 and r.rlm.trajectory for r in rows)
    assert most == 4  # the four runs overlapped
    assert len(list(tmp_path.glob("niah-*-seed*.jsonl"))) == 4  # noqa: ASYNC240
