"""Typed answers (`output_type=`) and structured FINAL values, in both REPLs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

import rlm
from rlm.errors import ConfigurationError
from rlm.testing import ScriptedModel


class Churn(BaseModel):
    month: str
    customers: list[str]
    count: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    key: str
    value: float


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


@pytest.fixture(params=["subprocess", "inprocess"])
def repl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(steps: list[Any], repl: str, **kwargs: Any) -> tuple[rlm.RLMResult, ScriptedModel]:
    model = ScriptedModel(steps)
    result = rlm.run("Who churned?", "ctx", model=model, repl=repl, **kwargs)
    model.assert_exhausted()
    return result, model


def test_a_pydantic_answer_is_corrected_after_one_invalid_attempt(repl: str) -> None:
    result, model = run(
        [
            code("FINAL({'month': 'March', 'customers': ['a', 'b'], 'count': 'two'})"),
            code("ans = {'month': 'March', 'customers': ['a', 'b'], 'count': 2}\nFINAL_VAR('ans')"),
        ],
        repl,
        output_type=Churn,
    )
    assert result.stop_reason == "final"
    assert result.output == Churn(month="March", customers=["a", "b"], count=2)
    assert json.loads(result.answer or "") == {
        "month": "March",
        "customers": ["a", "b"],
        "count": 2,
    }
    # The first answer went back with what was wrong, and the run went on.
    told = model.calls[1].messages[-1].content
    assert "not accepted" in told and "count: Input should be a valid integer" in told
    assert result.history[0].final_answer is None
    # The prompt stated the shape.
    assert '"count":{"type":"integer"}' in model.calls[0].messages[1].content


def test_after_max_iterations_there_is_no_output_rather_than_an_invalid_one(repl: str) -> None:
    result, _ = run(
        [code("FINAL({'month': 3})"), "FINAL(not json at all)"],
        repl,
        output_type=Churn,
        max_iterations=1,
    )
    assert result.stop_reason == "max_iterations"
    assert result.output is None and result.answer is None


def test_a_text_answer_with_json_is_validated(repl: str) -> None:
    result, _ = run(['FINAL({"x": 1, "y": 2})'], repl, output_type=Point)
    assert result.output == Point(1, 2)
    assert result.answer == '{"x":1,"y":2}'


@pytest.mark.parametrize(
    ("output_type", "final", "expected"),
    [
        (int, "FINAL(6 * 7)", 42),
        (float, "FINAL('2.5')", 2.5),
        (bool, "FINAL(1 == 1)", True),
        (str, "FINAL('plain words')", "plain words"),
        (list[int], "FINAL([3, 2, 1])", [3, 2, 1]),
        (dict[str, int], "FINAL({'a': 1})", {"a": 1}),
        (Pair, "FINAL({'key': 'k', 'value': 1})", {"key": "k", "value": 1.0}),
        (
            {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            "FINAL({'n': 5})",
            {"n": 5},
        ),
    ],
)
def test_every_kind_of_output_type(output_type: Any, final: str, expected: Any) -> None:
    result, _ = run([code(final)], "inprocess", output_type=output_type)
    assert result.output == expected
    assert type(result.output) is type(expected)


def test_a_json_schema_answer_is_corrected(repl: str) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0}},
        "required": ["n"],
    }
    result, model = run(
        [code("FINAL({'n': -1})"), code("FINAL({'n': 1})")], repl, output_type=schema
    )
    assert result.output == {"n": 1} and result.answer == '{"n": 1}'
    assert "n: -1 is less than the minimum of 0" in model.calls[1].messages[-1].content


def test_without_output_type_a_dict_final_var_gives_json_and_the_value(repl: str) -> None:
    result, _ = run(
        [code("totals = {'north': 3, 'south': [1, None], 'ok': True}"), "FINAL_VAR(totals)"], repl
    )
    assert json.loads(result.answer or "") == {"north": 3, "south": [1, None], "ok": True}
    assert result.output == {"north": 3, "south": [1, None], "ok": True}


def test_without_output_type_values_keep_their_text(repl: str) -> None:
    result, _ = run([code("FINAL(42)")], repl)
    assert (result.answer, result.output) == ("42", 42)
    result, _ = run([code("FINAL('words')")], repl)
    assert (result.answer, result.output) == ("words", "words")
    result, _ = run([code("FINAL({1, 2})")], repl)  # not JSON: its text, as before
    assert (result.answer, result.output) == ("{1, 2}", "{1, 2}")


def test_output_type_per_call_overrides_the_engines() -> None:
    engine = rlm.RLM(ScriptedModel([code("FINAL(7)"), code("FINAL(7)")]), repl="inprocess")
    assert engine.run("q", "c", output_type=int).output == 7
    assert engine.run("q", "c").output == 7  # untyped: the value given


def test_bad_output_types_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a valid JSON Schema"):
        rlm.RLM(ScriptedModel([]), output_type={"type": "no-such-type"})

    class Opaque:
        pass

    with pytest.raises(ConfigurationError, match="not a type pydantic can validate"):
        rlm.RLM(ScriptedModel([]), output_type=Opaque)


def test_the_run_finished_event_carries_the_output_as_json() -> None:
    events: list[rlm.Event] = []
    rlm.run(
        "q",
        "c",
        model=ScriptedModel([code("FINAL({'x': 1, 'y': 2})")]),
        repl="inprocess",
        output_type=Point,
        on_event=events.append,
    )
    line = rlm.events.event_to_json(events[-1])
    assert json.loads(line)["result"]["output"] == {"x": 1, "y": 2}


def test_a_variable_that_cannot_become_text_is_reported_not_fatal(repl: str) -> None:
    result, model = run(
        [code("x = []\nfor _ in range(100_000):\n    x = [x]"), "FINAL_VAR(x)", "FINAL(ok)"], repl
    )
    assert result.answer == "ok"
    assert "'x' cannot be turned into text (RecursionError" in model.calls[2].messages[-1].content
