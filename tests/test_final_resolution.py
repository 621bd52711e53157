"""How the answer is read from what real models write (issue 12): a bare `FINAL(name)` of
a REPL variable, and a last-answer reply that computes its answer in code."""

from __future__ import annotations

import pytest

import rlm
from rlm.events import Event, FinalAnswer
from rlm.strategies import ToolCallingParser
from rlm.testing import ScriptedModel


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def finals(events: list[Event]) -> list[FinalAnswer]:
    return [e for e in events if isinstance(e, FinalAnswer)]


# -- 1. FINAL(name) of an existing variable ------------------------------------------------


@pytest.mark.parametrize("repl", ["inprocess", "subprocess"])
def test_bare_final_of_an_existing_variable_answers_with_its_value(repl: str) -> None:
    # What gpt-4o wrote: print the variable, then FINAL with its bare name.
    model = ScriptedModel(
        [code("import random\nrandom_number = 1000 + 7\nprint(random_number)"),
         "The number is printed above.\nFINAL(random_number)"]
    )  # fmt: skip
    events: list[Event] = []
    result = rlm.run("Pick a number", "c", model=model, repl=repl, on_event=events.append)
    assert result.answer == "1007"
    assert result.resolved_variable == "random_number"
    (final,) = finals(events)
    assert (final.answer, final.source, final.resolved_variable) == (
        "1007",
        "text",
        "random_number",
    )
    assert "the value of variable random_number" in final.how


def test_anything_else_in_final_stays_text() -> None:
    model = ScriptedModel([code("total = 5"), 'FINAL("total")'])
    quoted = rlm.run("q", "c", model=model, repl="inprocess")
    assert (quoted.answer, quoted.resolved_variable) == ("total", None)
    for written, answer in [
        ("FINAL(Paris)", "Paris"),  # no such variable
        ("FINAL(total + 1)", "total + 1"),  # not a bare name
        ("FINAL(None)", "None"),  # a keyword, never a variable
        ("FINAL(FINAL_VAR)", "FINAL_VAR"),  # a helper, not a variable
    ]:
        result = rlm.run("q", "c", model=ScriptedModel([code("total = 5"), written]),
                         repl="inprocess")  # fmt: skip
        assert (result.answer, result.resolved_variable) == (answer, None), written


def test_a_tool_calls_answer_argument_is_text_even_when_it_names_a_variable() -> None:
    model = ScriptedModel([
        rlm.ModelResponse(text="", tool_calls=(
            rlm.ToolCall(id="c1", name="execute_python", arguments={"code": "n = 6"}),
        )),
        rlm.ModelResponse(text="", tool_calls=(
            rlm.ToolCall(id="c2", name="final_answer", arguments={"answer": "n"}),
        )),
    ])  # fmt: skip
    result = rlm.run("q", "c", model=model, repl="inprocess", parsing=ToolCallingParser())
    assert (result.answer, result.resolved_variable) == ("n", None)


# -- 2. the last-answer reply's code runs ----------------------------------------------------

LLAMA_LAST_REPLY = """\
Based on my analysis, here is the final answer.
```repl
final_answer = f"The total is {found + 1}"
print(final_answer)
```
FINAL_VAR(final_answer)"""


@pytest.mark.parametrize("repl", ["inprocess", "subprocess"])
def test_code_in_the_last_answer_reply_runs_before_its_marker_is_resolved(repl: str) -> None:
    model = ScriptedModel([code("found = 41"), LLAMA_LAST_REPLY])
    events: list[Event] = []
    result = rlm.run("q", "c", model=model, repl=repl, max_iterations=1, on_event=events.append)
    assert result.stop_reason == "max_iterations"
    assert result.answer == "The total is 42"  # `found` from the loop's REPL is still there
    assert not result.from_prose and result.ok
    assert result.code_executions == 2
    (final,) = finals(events)
    assert (final.source, final.from_prose) == ("forced", False)
    model.assert_exhausted()


def test_final_called_in_the_last_answer_reply_code_is_the_answer() -> None:
    model = ScriptedModel([code("x = 20"), code("FINAL(x * 2 + 2)") + "\nFINAL(wrong)"])
    result = rlm.run("q", "c", model=model, repl="inprocess", max_iterations=1)
    assert (result.answer, result.from_prose) == ("42", False)


def test_an_unresolvable_last_answer_falls_back_to_the_prose_marked_as_such() -> None:
    reply = "I could not finish; my best estimate is 42.\n" + code("1 / 0") + "\nFINAL_VAR(nope)"
    model = ScriptedModel([code("x = 1"), reply])
    events: list[Event] = []
    result = rlm.run("q", "c", model=model, repl="inprocess", max_iterations=1,
                     on_event=events.append)  # fmt: skip
    assert result.answer == "I could not finish; my best estimate is 42.\n\nFINAL_VAR(nope)"
    assert result.from_prose
    (final,) = finals(events)
    assert final.from_prose and "prose" in final.how


def test_a_last_answer_reply_without_a_marker_is_prose_without_its_code() -> None:
    model = ScriptedModel([code("x = 1"), "The answer is 7.\n" + code("print('checking')")])
    result = rlm.run("q", "c", model=model, repl="inprocess", max_iterations=1)
    assert (result.answer, result.from_prose) == ("The answer is 7.", True)


def test_the_last_answer_reply_code_runs_under_the_runs_budget() -> None:
    # One sub-call allowed, spent in the loop: the last reply's sub-call is refused.
    sub = rlm.testing.FunctionModel(lambda r: "41", name="sub")
    reply = "Total below.\n" + code("total = int(llm_query('again')) + 1") + "\nFINAL_VAR(total)"
    model = ScriptedModel([code("first = llm_query('count')"), reply])
    result = rlm.run("q", "c", model=model, sub_model=sub, repl="inprocess", max_iterations=1,
                     budget=rlm.Budget(max_subcalls=1))  # fmt: skip
    assert result.sub_calls == 1
    assert result.from_prose and result.answer == "Total below.\n\nFINAL_VAR(total)"


def test_the_last_answer_reply_code_runs_within_the_deadline() -> None:
    reply = code("import time\ntime.sleep(60)\nanswer = 'late'") + "\nFINAL_VAR(answer)"
    model = ScriptedModel([code("x = 1"), reply])
    result = rlm.run("q", "c", model=model, repl="subprocess", max_iterations=1,
                     budget=rlm.Budget(max_seconds=3))  # fmt: skip
    assert (result.stop_reason, result.limit, result.answer) == ("deadline", "max_seconds", None)
