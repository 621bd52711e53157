"""What every REPL must do the same way: in-process, and in the sandboxed worker (both paths)."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest
from _support import REPL_KINDS, TEST_LIMITS, FakeHost, Recorder, code, make_repl, repl_factory

import rlm
from rlm.repl import ExecutionResult, Repl, ReplLimits
from rlm.testing import FunctionModel, ScriptedModel

pytestmark = pytest.mark.parametrize("kind", REPL_KINDS)


async def started(kind: str, context: object = "the context", **limits: object) -> Repl:
    repl = make_repl(kind, ReplLimits(**{**_limits_dict(), **limits}))  # type: ignore[arg-type]
    await repl.start(context, FakeHost())
    return repl


def _limits_dict() -> dict[str, object]:
    return {
        "wall_seconds": TEST_LIMITS.wall_seconds,
        "grace_seconds": TEST_LIMITS.grace_seconds,
        "memory_mb": TEST_LIMITS.memory_mb,
        "max_processes": TEST_LIMITS.max_processes,
    }


async def run_all(repl: Repl, *blocks: str) -> list[ExecutionResult]:
    try:
        return [await repl.execute(block) for block in blocks]
    finally:
        await repl.close()


async def test_variables_persist_across_blocks(kind: str) -> None:
    repl = await started(kind)
    first, second = await run_all(repl, "x = 20\ny = len(context)", "print(x + y)")
    assert first.error is None and first.stdout == ""
    assert second.stdout == "31\n"


async def test_variables_made_before_an_exception_are_kept(kind: str) -> None:
    repl = await started(kind)
    failed, after = await run_all(repl, "a = 1\nraise ValueError('boom')\nb = 2", "print(a)")
    assert failed.error is not None and "ValueError: boom" in failed.error
    assert not failed.restarted
    assert after.stdout == "1\n" and after.error is None


async def test_traceback_line_numbers_point_into_the_block(kind: str) -> None:
    repl = await started(kind)
    (result,) = await run_all(repl, "x = 1\ny = 2\nz = undefined_name\n")
    assert result.error is not None
    assert 'File "<cell 1>", line 3' in result.error
    assert "NameError" in result.error
    assert "rlm/repl" not in result.error  # our own frames are not shown


async def test_trailing_expression_is_displayed(kind: str) -> None:
    repl = await started(kind)
    (result,) = await run_all(repl, "x = [1, 2]\nx + [3]")
    assert result.stdout == "[1, 2, 3]\n"


async def test_overwritten_helpers_are_restored(kind: str) -> None:
    repl = await started(kind)
    clobber, after = await run_all(
        repl, "llm_query = 5\nFINAL = None", "print(callable(llm_query))"
    )
    assert "restored" in clobber.stderr and "llm_query" in clobber.stderr
    assert after.stdout == "True\n"


async def test_final_and_final_var(kind: str) -> None:
    repl = await started(kind)
    try:
        plain = await repl.execute("FINAL(6 * 7)")
        assert plain.final == "42"
        var = await repl.execute("answer = 'from a variable'\nFINAL_VAR('answer')")
        assert var.final == "from a variable"
        missing = await repl.execute("FINAL_VAR('nope')")
        assert missing.final is None and "no variable named 'nope'" in missing.stderr
        found = await repl.lookup_variable("answer")
        assert found.value == "from a variable" and found.error is None
        absent = await repl.lookup_variable("nothing")
        assert absent.value is None and absent.error and "answer" in absent.error
    finally:
        await repl.close()


async def test_a_dataclass_the_code_defines_is_answered_as_its_fields(kind: str) -> None:
    repl = await started(kind)
    (result,) = await run_all(
        repl,
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Point:\n    x: int\n    y: list\n"
        "p = Point(3, [1, 2])\nFINAL(p)",
    )
    assert result.error is None
    assert result.final_json is not None
    assert json.loads(result.final_json) == {"x": 3, "y": [1, 2]}


async def test_output_is_cut_but_the_true_length_is_reported(kind: str) -> None:
    repl = await started(kind, output_chars=10_000)
    (result,) = await run_all(repl, "print('x' * 3_000_000)")
    assert result.stdout_chars == 3_000_001
    assert len(result.stdout) < 20_000
    assert "characters not kept" in result.stdout


async def test_batched_subcalls_run_concurrently(kind: str) -> None:
    host = FakeHost(delay_s=0.05)
    repl = make_repl(kind)
    await repl.start("ctx", host)
    try:
        result = await repl.execute(
            "answers = llm_query_batched([f'q{i}' for i in range(8)])\nprint(answers[3])"
        )
    finally:
        await repl.close()
    assert result.error is None
    assert result.stdout == "answer to q3\n"
    assert host.max_in_flight == 8


async def test_subcall_errors_reach_the_code(kind: str) -> None:
    class FailingHost(FakeHost):
        async def llm_query(self, prompt: str, model: str | None = None) -> str:
            raise rlm.repl.LLMQueryError("no budget left")

    repl = make_repl(kind)
    await repl.start("ctx", FailingHost())
    try:
        result = await repl.execute(
            "try:\n    llm_query('hi')\nexcept Exception as e:\n    print(type(e).__name__, e)"
        )
    finally:
        await repl.close()
    assert result.stdout == "LLMQueryError no budget left\n"


def test_a_whole_run_with_subcalls(kind: str) -> None:
    in_flight = 0
    peak = 0

    async def sub(request: rlm.ModelRequest) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return request.messages[-1].content.upper()

    check = Recorder("FINAL(done)")
    model = ScriptedModel(
        [code("parts = llm_query_batched(['a', 'b', 'c', 'd'])\nprint(''.join(parts))"), check]
    )
    result = rlm.run(
        "q", "context", model=model, sub_model=FunctionModel(sub), repl=repl_factory(kind)
    )
    assert result.answer == "done"
    assert "ABCD" in check.message
    assert peak == 4


def test_two_runs_in_two_threads_do_not_see_each_others_output(kind: str) -> None:
    results: dict[str, str] = {}

    def one(tag: str) -> None:
        check = Recorder("FINAL(ok)")
        model = ScriptedModel(
            [
                code(f"for i in range(200):\n    print('{tag}', i)\nimport time; time.sleep(0.05)"),
                check,
            ]
        )
        rlm.run("q", "c", model=model, repl=repl_factory(kind))
        results[tag] = check.message

    threads = [threading.Thread(target=one, args=(tag,)) for tag in ("alpha", "omega")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "alpha 199" in results["alpha"] and "omega" not in results["alpha"]
    assert "omega 199" in results["omega"] and "alpha" not in results["omega"]


@pytest.mark.parametrize(
    "context",
    [
        "short text",
        {"a": [1, 2.5, None], "b": ("x", b"y")},
        [{"name": f"n{i}", "salary": i} for i in range(100)],
        b"\x00\x01binary",
    ],
    ids=["str", "dict", "records", "bytes"],
)
async def test_context_arrives_intact(kind: str, context: object) -> None:
    repl = await started(kind, context=context)
    (result,) = await run_all(repl, "print(repr(context))")
    assert result.stdout == repr(context) + "\n"


async def test_code_does_not_run_in_the_host_process_unless_inprocess(kind: str) -> None:
    repl = await started(kind)
    (result,) = await run_all(repl, "import os\nprint(os.getpid())")
    same = result.stdout.strip() == str(os.getpid())
    assert same == (kind == "inprocess")
