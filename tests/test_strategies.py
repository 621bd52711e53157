"""Swapping parsing and termination strategies through the public API."""

from __future__ import annotations

import re
from pathlib import Path

import rlm
from rlm.strategies import (
    AnyOf,
    MaxIterations,
    NoProgress,
    RunState,
    Stop,
    TerminationStrategy,
    ToolCallingParser,
    default_termination,
)
from rlm.testing import ScriptedModel

DOCS = Path(__file__).resolve().parent.parent / "docs"


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def test_docs_strategies_page_runs() -> None:
    text = (DOCS / "strategies.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 4
    namespace: dict[str, object] = {"__name__": "docs_strategies"}
    for block in blocks:
        exec(compile(block, "docs/strategies.md", "exec"), namespace)


def test_no_progress_stops_a_run_stuck_on_one_error() -> None:
    model = ScriptedModel([code("int('x')")] * 4)
    result = rlm.run("q", "c", model=model, repl="inprocess")
    assert result.stop_reason == "error"
    assert "4 times in a row" in (result.error or "")
    assert "invalid literal" in (result.error or "")
    assert result.answer is None


def test_different_errors_are_progress() -> None:
    model = ScriptedModel(
        [code("int('x')"), code("1/0"), code("int('x')"), code("[][1]"), "FINAL(ok)"]
    )
    assert rlm.run("q", "c", model=model, repl="inprocess").answer == "ok"


def test_a_strategy_can_stop_early_but_not_run_past_the_guards() -> None:
    class Never(TerminationStrategy):
        def check(self, state: RunState) -> Stop | None:
            return None

    # Never stopping still ends at max_iterations (then asks for an answer).
    model = ScriptedModel([code("x = 1"), code("x = 2"), "FINAL(2)"])
    result = rlm.run("q", "c", model=model, repl="inprocess", termination=Never(), max_iterations=2)
    assert (result.stop_reason, result.answer) == ("max_iterations", "2")

    # A tighter iteration limit stops earlier.
    model = ScriptedModel([code("x = 1"), "FINAL(early)"])
    result = rlm.run(
        "q",
        "c",
        model=model,
        repl="inprocess",
        termination=AnyOf(default_termination(), MaxIterations(1)),
    )
    assert (result.stop_reason, result.answer, result.iterations) == ("max_iterations", "early", 1)


def test_state_seen_by_a_strategy() -> None:
    seen: list[RunState] = []

    class Spy(TerminationStrategy):
        def check(self, state: RunState) -> Stop | None:
            seen.append(state)
            return None

    model = ScriptedModel([code("1/0"), "FINAL(x)"])
    rlm.run(
        "q",
        "c",
        model=model,
        repl="inprocess",
        termination=Spy(),
        budget=rlm.Budget(max_tokens=10**9),
    )
    assert [s.iteration for s in seen] == [1, 2]
    assert seen[0].errors[0] is not None and "ZeroDivisionError" in seen[0].errors[0]
    assert seen[1].final_answer == "x"
    assert seen[1].usage.requests == 2
    assert seen[0].budget.max_tokens == 10**9


def test_tool_calling_prompt_has_no_fence_instructions() -> None:
    model = ScriptedModel(
        [
            rlm.ModelResponse(
                text="",
                tool_calls=(
                    rlm.ToolCall(id="a", name="final_answer", arguments={"answer": "done"}),
                ),
            ),
        ]
    )
    result = rlm.run("q", "c", model=model, parsing=ToolCallingParser(), repl="inprocess")
    assert result.answer == "done"
    system = model.calls[0].messages[0].content
    assert "```repl" not in system and "execute_python" in system


def test_tool_calling_reminder_answers_unknown_tools() -> None:
    model = ScriptedModel(
        [
            rlm.ModelResponse(
                text="hmm", tool_calls=(rlm.ToolCall(id="z", name="browse", arguments={}),)
            ),
            rlm.ModelResponse(
                text="",
                tool_calls=(
                    rlm.ToolCall(id="b", name="execute_python", arguments={"code": "FINAL(3)"}),
                ),
            ),
        ]
    )
    result = rlm.run("q", "c", model=model, parsing=ToolCallingParser(), repl="inprocess")
    assert result.answer == "3"
    tool_msgs = [m for m in model.calls[1].messages if m.role == "tool"]
    assert tool_msgs and tool_msgs[0].tool_call_id == "z"


def test_no_progress_requires_two_repeats() -> None:
    try:
        NoProgress(1)
    except ValueError as exc:
        assert "at least 2" in str(exc)
    else:
        raise AssertionError("NoProgress(1) was accepted")
