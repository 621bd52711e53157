"""User tools as the model's code sees them, in the sandbox and in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel

import rlm
from rlm.errors import ConfigurationError, ReplError
from rlm.events import Event, ToolCallFinished, ToolCallStarted
from rlm.testing import ScriptedModel

SECRET = "tool-secret-4f1c"


class Customer(BaseModel):
    id: int
    name: str


@dataclasses.dataclass
class Invoice:
    customer: str
    total: float


def lookup_customer(customer_id: int) -> Customer:
    """The customer's record, by id.

    This second paragraph is not shown to the model."""
    if customer_id < 0:
        raise LookupError(f"no customer {customer_id}")
    _ = SECRET  # the closure/globals the sandbox must never see
    return Customer(id=customer_id, name=f"c{customer_id}")


async def fetch_invoice(customer: Customer, month: str = "03") -> Invoice:
    """The invoice of a customer for a month."""
    await asyncio.sleep(0)
    return Invoice(customer=customer.name, total=10.5 * len(month))


class Opaque:
    """Not something pydantic can rebuild from JSON."""


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


@pytest.fixture(params=["subprocess", "inprocess"])
def repl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(steps: list[Any], repl: str, **kwargs: Any) -> tuple[rlm.RLMResult, ScriptedModel]:
    model = ScriptedModel(steps)
    kwargs.setdefault("tools", [lookup_customer, fetch_invoice])
    result = rlm.run("q", "ctx", model=model, repl=repl, **kwargs)
    model.assert_exhausted()
    return result, model


def fed_back(model: ScriptedModel, call: int) -> str:
    """What the model was told after its reply number `call` - 1."""
    return model.calls[call].messages[-1].content


def test_sync_and_async_tools_run_on_the_host_with_json_values(repl: str) -> None:
    events: list[Event] = []
    result, model = run(
        [
            code(
                "c = lookup_customer(7)\n"
                "inv = fetch_invoice(c, month='0310')\n"
                "print(type(c).__name__, c['name'], type(inv).__name__, inv)"
            ),
            "FINAL(done)",
        ],
        repl,
        on_event=events.append,
    )
    assert result.answer == "done"
    # Results come back as JSON values: the model gets dicts, never host objects.
    assert "dict c7 dict {'customer': 'c7', 'total': 42.0}" in fed_back(model, 1)
    assert result.tool_calls == 2
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [e.name for e in started] == ["lookup_customer", "fetch_invoice"]
    assert json.loads(started[0].arguments) == [7]
    assert json.loads(started[1].arguments)["kwargs"] == {"month": "0310"}
    assert all(e.exec_id is not None for e in started)
    assert [e.ok for e in finished] == [True, True]
    assert json.loads(finished[0].result) == {"id": 7, "name": "c7"}
    assert all(e.duration_s >= 0 for e in finished)


def test_a_tool_that_raises_reaches_the_code_as_an_exception_and_the_run_goes_on(
    repl: str,
) -> None:
    events: list[Event] = []
    result, model = run(
        [
            code(
                "try:\n"
                "    lookup_customer(-1)\n"
                "except Exception as exc:\n"
                "    print('caught', type(exc).__name__, exc)\n"
                "lookup_customer(-2)"
            ),
            code("FINAL(lookup_customer(1)['name'])"),
        ],
        repl,
        on_event=events.append,
    )
    assert result.answer == "c1" and result.stop_reason == "final"
    told = fed_back(model, 1)
    assert "caught ToolError lookup_customer() raised LookupError: no customer -1" in told
    # The uncaught one is a traceback of the model's own code, not of the host.
    assert "LookupError: no customer -2" in told
    assert "tools.py" not in told and "engine.py" not in told
    errors = [e.error for e in events if isinstance(e, ToolCallFinished) and not e.ok]
    assert errors == [
        "lookup_customer() raised LookupError: no customer -1",
        "lookup_customer() raised LookupError: no customer -2",
    ]
    assert result.tool_calls == 3


def test_arguments_are_checked_and_rebuilt_from_json(repl: str) -> None:
    _, model = run(
        [
            code(
                "for call in (lambda: lookup_customer('x'), lambda: lookup_customer(1, 2),\n"
                "             lambda: lookup_customer({1, 2}),\n"
                "             lambda: fetch_invoice({'id': 'nope', 'name': 'a'})):\n"
                "    try:\n"
                "        call()\n"
                "    except Exception as exc:\n"
                "        print(type(exc).__name__, '|', exc)\n"
                "print(fetch_invoice({'id': 3, 'name': 'n'}))"
            ),
            "FINAL(ok)",
        ],
        repl,
    )
    told = fed_back(model, 1)
    assert "ToolError | lookup_customer(): argument 'customer_id' is not valid" in told
    assert "too many positional arguments" in told
    # A set is not JSON: refused in the REPL before anything is sent.
    assert "TypeError | lookup_customer(): argument 1 is a set, which is not a JSON value" in told
    assert "fetch_invoice(): argument 'customer' is not valid: id:" in told
    assert "{'customer': 'n', 'total': 21.0}" in told


def test_results_that_are_not_json_are_refused(repl: str) -> None:
    def opener() -> Any:
        """Returns something that cannot cross."""
        return {"handle": threading.Lock()}

    _, model = run(
        [code("try:\n    opener()\nexcept Exception as exc:\n    print(exc)"), "FINAL(x)"],
        repl,
        tools=[opener],
    )
    assert "opener() returned a value that cannot be sent back as JSON" in fed_back(model, 1)
    assert "the result['handle'] is a lock" in fed_back(model, 1)


@pytest.mark.parametrize("where", ["subprocess", "inprocess"])
def test_the_sandbox_never_gets_the_function_or_its_globals(where: str) -> None:
    _, model = run(
        [
            code(
                "import gc, sys\n"
                "f = lookup_customer\n"
                "found = any(\n"
                "    v == 'tool-secret-' + '4f1c'\n"
                "    for o in gc.get_objects() if isinstance(o, (dict, list))\n"
                "    for v in (o.values() if isinstance(o, dict) else o)\n"
                ") or any(c.cell_contents is not None and 'secret' in repr(c.cell_contents)\n"
                "         for c in f.__closure__ or ())\n"
                "print('secret seen:', found, any(m.endswith('test_tools') for m in sys.modules),\n"
                "      '| doc:', f.__doc__)"
            ),
            "FINAL(x)",
        ],
        where,
    )
    told = fed_back(model, 1)
    # In-process the probe finds the tool's module and its secret (it shares the host's
    # memory); in the sandbox, neither is there.
    if where == "inprocess":
        assert "secret seen: True True" in told
        return
    assert "secret seen: False False" in told
    assert "lookup_customer(customer_id: int) -> Customer" in told
    assert "The customer's record, by id." in told
    assert "second paragraph" not in told


def test_tools_are_listed_in_a_short_system_prompt(repl: str) -> None:
    _, model = run(["FINAL(x)"], repl)
    system = model.calls[0].messages[0].content
    assert "- `lookup_customer(customer_id: int) -> Customer`: The customer's record" in system
    assert "fetch_invoice(customer: Customer, month: str = '03') -> Invoice" in system
    assert "Customer = {id: int, name: str}" in system
    assert "second paragraph" not in system
    assert len(system) < 4000


def test_a_tool_timeout_reaches_the_code(repl: str) -> None:
    async def slow() -> str:
        """Never answers in time."""
        await asyncio.sleep(30)
        return "late"

    tool = rlm.Tool.from_function(slow, timeout_s=0.2)
    result, model = run(
        [code("try:\n    slow()\nexcept Exception as exc:\n    print(exc)"), "FINAL(x)"],
        repl,
        tools=[tool],
    )
    assert "slow() did not finish within its time limit (0.2 s)" in fed_back(model, 1)
    assert result.answer == "x"


def test_the_deadline_stops_a_tool_call(repl: str) -> None:
    async def forever() -> str:
        """Hangs."""
        await asyncio.sleep(60)
        return "never"

    model = ScriptedModel([code("forever()")])
    result = rlm.run(
        "q",
        "ctx",
        model=model,
        repl=repl,
        tools=[rlm.Tool.from_function(forever, timeout_s=None)],
        budget=rlm.Budget(max_seconds=1.0),
    )
    assert result.stop_reason == "deadline"


def test_tool_calls_obey_max_concurrency(repl: str) -> None:
    state = {"now": 0, "max": 0}

    async def probe(i: int) -> int:
        """Counts overlapping calls."""
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        return i

    result, model = run(
        [
            code(
                "from concurrent.futures import ThreadPoolExecutor\n"
                "with ThreadPoolExecutor(6) as pool:\n"
                "    print(sorted(pool.map(probe, range(6))))"
            ),
            "FINAL(x)",
        ],
        repl,
        tools=[probe],
        max_concurrency=2,
    )
    assert "[0, 1, 2, 3, 4, 5]" in fed_back(model, 1)
    assert result.tool_calls == 6
    assert 1 <= state["max"] <= 2


def test_child_runs_get_the_same_tools_unless_sub_tools_says_otherwise(repl: str) -> None:
    calls: list[str] = []

    def note(text: str) -> str:
        """Records a note."""
        calls.append(text)
        return text.upper()

    child = code("FINAL(note('from child'))")
    parent = code("print(rlm_query('do it'))")

    model = ScriptedModel([parent, child, "FINAL(done)"])
    result = rlm.run("q", "ctx", model=model, repl=repl, max_depth=2, tools=[note])
    assert calls == ["from child"]
    assert "FROM CHILD" in fed_back(model, 2)
    assert result.tool_calls == 1
    # The child's system prompt listed the tool.
    assert "note(text: str) -> str" in model.calls[1].messages[0].content

    model = ScriptedModel([parent, child, "FINAL(no tool)", "FINAL(done)"])
    rlm.run("q", "ctx", model=model, repl=repl, max_depth=2, tools=[note], sub_tools=[])
    assert "note(" not in model.calls[1].messages[0].content
    assert "NameError" in fed_back(model, 2)  # the child has no such function


@pytest.mark.parametrize(
    "name", ["llm_query", "FINAL", "FINAL_VAR", "SHOW_VARS", "context", "context_2", "print"]
)
def test_a_tool_named_like_a_repl_helper_is_refused(name: str) -> None:
    def fn() -> None:
        """x"""

    with pytest.raises(ConfigurationError, match="cannot be called"):
        rlm.RLM(ScriptedModel([]), tools=[rlm.Tool.from_function(fn, name=name)])


def test_bad_tool_lists_are_refused() -> None:
    def fn(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="two tools are called 'fn'"):
        rlm.RLM(ScriptedModel([]), tools=[fn, fn])
    with pytest.raises(ConfigurationError, match="takes a list"):
        rlm.RLM(ScriptedModel([]), tools=fn)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a Python identifier"):
        rlm.RLM(ScriptedModel([]), tools=[lambda: 1])

    def takes(o: Opaque) -> None:
        """x"""

    with pytest.raises(ConfigurationError, match="cannot be rebuilt from JSON"):
        rlm.RLM(ScriptedModel([]), tools=[takes])


def test_a_function_inside_the_context_gets_a_clear_error() -> None:
    def local(x: int) -> int:  # not importable, so it cannot be pickled into the sandbox
        return x

    with pytest.raises(ReplError, match=r"context\['fn'\].*Pass it as a tool"):
        rlm.run(
            "q",
            {"rows": [1], "fn": local},
            model=ScriptedModel([code("print(1)")]),
            repl="subprocess",
        )


def test_tool_parameters_have_a_json_schema() -> None:
    tool = rlm.Tool.from_function(fetch_invoice)
    assert tool.parameters["required"] == ["customer"]
    assert tool.parameters["properties"]["month"]["default"] == "03"


def test_the_system_prompt_stays_under_4000_characters_with_many_tools() -> None:
    def make(i: int) -> rlm.Tool:
        def fn(customer_id: int, year: int | None = None) -> Customer:
            return Customer(id=customer_id, name="x")

        about = f"Tool number {i}: " + "a long description of what it does and returns. " * 5
        return rlm.Tool.from_function(fn, name=f"tool_{i}", description=about)

    sizes = {}
    for count in (1, 6, 20):
        model = ScriptedModel(["FINAL(x)"])
        rlm.run("q", "c", model=model, repl="inprocess", tools=[make(i) for i in range(count)])
        system = model.calls[0].messages[0].content
        sizes[count] = len(system)
        assert "tool_0(customer_id: int, year: int | None = None) -> Customer" in system
        assert system.count("Customer = {id: int, name: str}") == 1
    assert max(sizes.values()) < 4000, sizes
    # A short list keeps whole descriptions; a long one is cut to fit.
    assert sizes[1] < sizes[6]


def test_a_sync_tool_past_its_timeout_does_not_hold_up_the_run(repl: str) -> None:
    release, finished = threading.Event(), threading.Event()

    def stuck() -> str:
        """Blocks until released."""
        release.wait(30)
        finished.set()
        return "late"

    try:
        result, model = run(
            [code("try:\n    stuck()\nexcept Exception as exc:\n    print(exc)"), "FINAL(x)"],
            repl,
            tools=[rlm.Tool.from_function(stuck, timeout_s=0.2)],
        )
        assert "stuck() did not finish within its time limit" in fed_back(model, 1)
        assert result.answer == "x"
        assert not finished.is_set()  # the run ended while the tool was still blocked
    finally:
        release.set()


async def test_cancelling_a_run_cancels_its_tool_call(repl: str) -> None:
    entered = asyncio.Event()

    async def wait_forever() -> str:
        """Never returns."""
        entered.set()
        await asyncio.sleep(60)
        return "never"

    events: list[Event] = []
    engine = rlm.RLM(
        ScriptedModel([code("wait_forever()")]),
        repl=repl,
        tools=[rlm.Tool.from_function(wait_forever, timeout_s=None)],
    )
    task = asyncio.create_task(engine.arun("q", "ctx", on_event=events.append))
    await asyncio.wait_for(entered.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(e.ok, e.error) for e in finished] == [(False, "cancelled")]
    assert events[-1].kind == "run_finished"
    assert events.index(finished[0]) < len(events) - 1


async def test_stream_takes_tools_and_an_output_type() -> None:
    model = ScriptedModel([code("FINAL({'customer_id': 4, 'name': lookup_customer(4)['name']})")])

    class Named(BaseModel):
        customer_id: int
        name: str

    events = [
        e
        async for e in rlm.stream(
            "q", "ctx", model=model, repl="inprocess", tools=[lookup_customer], output_type=Named
        )
    ]
    assert events[-1].kind == "run_finished"
    assert events[-1].result.output == Named(customer_id=4, name="c4")  # type: ignore[union-attr]
    assert any(isinstance(e, ToolCallStarted) for e in events)


def test_tools_and_a_typed_answer_with_native_tool_calling() -> None:
    from rlm.strategies import ToolCallingParser

    def call(call_id: str, name: str, **arguments: Any) -> rlm.ModelResponse:
        return rlm.ModelResponse(
            text="", tool_calls=(rlm.ToolCall(id=call_id, name=name, arguments=arguments),)
        )

    class Named(BaseModel):
        customer_id: int
        name: str

    model = ScriptedModel(
        [
            call("a", "execute_python", code="c = lookup_customer(5)\nprint(c)"),
            call("b", "final_answer", answer="not json"),
            call("c", "final_answer", answer='{"customer_id": 5, "name": "c5"}'),
        ]
    )
    result = rlm.run(
        "q",
        "ctx",
        model=model,
        parsing=ToolCallingParser(),
        repl="inprocess",
        tools=[lookup_customer],
        output_type=Named,
    )
    assert result.output == Named(customer_id=5, name="c5")
    assert result.tool_calls == 1
    assert "lookup_customer(customer_id: int) -> Customer" in model.calls[0].messages[0].content
    assert "the answer is not valid JSON" in model.calls[2].messages[-1].content
