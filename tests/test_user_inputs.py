"""What a user passes in: bad arguments get a `ConfigurationError` that says what to do,
and the prompt describes the context the user gave in words the model can use."""

from __future__ import annotations

import pytest

import rlm
from rlm.errors import ConfigurationError
from rlm.strategies import FencedCodeParser, FinalMarker, ParsedReply
from rlm.testing import ScriptedModel


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def test_a_context_list_that_contains_itself_is_a_configuration_error() -> None:
    looped: list[object] = ["a"]
    looped.append(looped)
    with pytest.raises(ConfigurationError, match="contains itself") as info:
        rlm.run("q", looped, model=ScriptedModel([]), repl="inprocess")
    assert "without such cycles" in str(info.value)
    nested: dict[str, object] = {}
    nested["k"] = [nested]
    with pytest.raises(ConfigurationError, match="contains itself"):
        rlm.run("q", nested, model=ScriptedModel([]), repl="inprocess")


def test_a_context_nested_too_deeply_is_a_configuration_error() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        rlm.run("q", deep, model=ScriptedModel([]), repl="inprocess")


def test_a_context_that_shares_a_list_twice_is_not_a_cycle() -> None:
    shared = ["x" * 10]
    model = ScriptedModel(["FINAL(ok)"])
    result = rlm.run("q", [shared, shared], model=model, repl="inprocess")
    assert result.answer == "ok"
    assert "20 characters in all" in model.calls[0].messages[1].content


@pytest.mark.parametrize("windows", [[1], {"m": 0}, {"m": "128k"}, {1: 100}, "m=1"])
def test_bad_context_windows_are_a_configuration_error(windows: object) -> None:
    with pytest.raises(ConfigurationError, match="context_windows"):
        rlm.RLM(ScriptedModel([]), context_windows=windows)  # type: ignore[arg-type]


@pytest.mark.parametrize("on_event", [1, [print, 2], "print"])
def test_an_on_event_that_is_not_callable_is_a_configuration_error(on_event: object) -> None:
    with pytest.raises(ConfigurationError, match="on_event takes a callable"):
        rlm.RLM(ScriptedModel([]), on_event=on_event)  # type: ignore[arg-type]
    engine = rlm.RLM(ScriptedModel([]), repl="inprocess")
    with pytest.raises(ConfigurationError, match="on_event takes a callable"):
        engine.run("q", "c", on_event=on_event)  # type: ignore[arg-type]


def test_a_final_marker_of_an_unknown_kind_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'answer'.*'var'"):
        FinalMarker("variable", "x")  # type: ignore[arg-type]

    class Misspelled(FencedCodeParser):
        def parse(self, response: rlm.ModelResponse) -> ParsedReply:
            return ParsedReply((), FinalMarker("variable", "x"))  # type: ignore[arg-type]

    engine = rlm.RLM(ScriptedModel(["FINAL_VAR(x)"]), repl="inprocess", parsing=Misspelled())
    with pytest.raises(ConfigurationError, match="FinalMarker kind 'variable'"):
        engine.run("q", "c")


@pytest.mark.parametrize(
    ("context", "summary"),
    [
        (["ab", "cd", "ef", "gh"], "list of 4 items (str, str, str, ...), 8 characters in all"),
        ([{"id": 1}, "xy"], "list of 2 items (dict, str), 5 characters in all"),
        ({"a.txt": "hello", "n": [1, 22]}, "dict of 2 items (str: str, str: list), "),
        ("hello", "str of 5 characters"),
    ],
)
def test_the_prompt_describes_items_total_characters_and_first_types(
    context: object, summary: str
) -> None:
    model = ScriptedModel(["FINAL(ok)"])
    rlm.run("q", context, model=model, repl="inprocess")
    system, first = (m.content for m in model.calls[0].messages[:2])
    assert summary in system
    assert summary in first
