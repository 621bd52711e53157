"""200 runs on the default sandbox, ending every way a run can end (issue 18).

Normal ends, cancellations at random points, BaseExceptions from models, sub-models and
subscribers, worker crashes, failing sub-calls and failing child runs, mixed at random
(seeded). Every run's events must end with exactly one RunFinished or RunFailed per run
of its tree, its totals must match its model-call events, and afterwards no worker
process, thread, file descriptor or event loop may be left.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from _leaks import Snapshot

import rlm
from rlm import ModelRequest
from rlm.errors import AuthenticationError, ProviderUnavailableError
from rlm.events import (
    Event,
    ModelCallFinished,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
)
from rlm.testing import FunctionModel, ScriptedModel

pytestmark = pytest.mark.slow

RUNS = 200


class Boom(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


INTERRUPTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, Boom)


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def sub_reply(request: ModelRequest) -> str:
    prompt = request.messages[-1].content
    if prompt.startswith("fail"):
        raise (ValueError if "value" in prompt else ProviderUnavailableError)(prompt)
    if request.purpose != "subcall":  # a child run's root call
        return "FINAL(child done)"
    return prompt.upper()


@dataclass
class Case:
    """One run: what drives it and which outcomes are allowed."""

    name: str
    root: ScriptedModel
    sub: FunctionModel = field(default_factory=lambda: FunctionModel(sub_reply, name="sub"))
    raises: tuple[type[BaseException], ...] = ()
    subscriber: Callable[[Event], None] | None = None
    cancel_after: float | None = None
    max_depth: int = 1


def make_case(rng: random.Random) -> Case:
    kind = rng.choice(
        ["normal", "batch", "cancel", "model", "sub_model", "subscriber", "crash", "child"]
    )
    interrupt = rng.choice(INTERRUPTS)
    latency = rng.choice([0.0, 0.01, 0.03])
    if kind == "normal":
        return Case(kind, ScriptedModel([code("print(llm_query('a'))"), "FINAL(ok)"]))
    if kind == "batch":
        prompts = [rng.choice(["p", "fail value", "fail provider"]) + str(i) for i in range(5)]
        return Case(
            kind, ScriptedModel([code(f"print(llm_query_batched({prompts!r}))"), "FINAL(ok)"])
        )
    if kind == "cancel":
        steps = [code(f"x = {i}\nprint(llm_query('s{i}'))") for i in range(8)]
        root = ScriptedModel([*steps, "FINAL(late)"], latency_s=0.02)
        return Case(kind, root, raises=(asyncio.CancelledError,), cancel_after=rng.uniform(0, 0.3))
    if kind == "model":
        steps: list[object] = [code("x = 1")] * rng.randint(0, 2)
        return Case(
            kind,
            ScriptedModel([*steps, interrupt("model")], latency_s=latency),
            raises=(interrupt,),
        )
    if kind == "sub_model":

        def sub(request: ModelRequest) -> str:
            raise interrupt("sub-model")

        return Case(
            kind,
            ScriptedModel([code("print(llm_query_batched(['a', 'b', 'c']))"), "FINAL(x)"]),
            sub=FunctionModel(sub, name="sub"),
            raises=(interrupt,),
        )
    if kind == "subscriber":
        on = rng.choice(
            [
                "run_started",
                "iteration_started",
                "code_executed",
                "subcall_started",
                "subcall_finished",
                "model_call_finished",
                "run_finished",
            ]
        )

        def subscriber(event: Event) -> None:
            if event.kind == on:
                raise interrupt(on)

        return Case(
            kind,
            ScriptedModel([code("print(llm_query('a'))"), "FINAL(ok)"]),
            subscriber=subscriber,
            raises=(interrupt,),
        )
    if kind == "crash":
        return Case(kind, ScriptedModel([code("import os\nos._exit(3)"), "FINAL(after crash)"]))
    # a child run that fails: a fatal error raised to the caller, or no answer (a string)
    fatal = rng.random() < 0.5

    def child_or_sub(request: ModelRequest) -> str:
        if request.purpose == "root":
            if fatal:
                raise AuthenticationError("key revoked")
            raise ValueError("child model broke")
        return "sub"

    return Case(
        kind,
        ScriptedModel([code("print(rlm_query('c'))"), "FINAL(ok)"]),
        sub=FunctionModel(child_or_sub, name="sub"),
        raises=(AuthenticationError,) if fatal else (),
        max_depth=2,
    )


def check(case: Case, events: list[Event], result: rlm.RLMResult | None) -> None:
    started = {e.run_id for e in events if isinstance(e, RunStarted)}
    ends = [e.run_id for e in events if isinstance(e, RunFinished | RunFailed)]
    assert sorted(ends) == sorted(started), f"{case.name}: runs {started}, ends {ends}"
    last = events[-1]
    assert isinstance(last, RunFinished | RunFailed) and last.depth == 0, case.name
    if isinstance(last, RunFinished):
        result = result or last.result
    if result is None:
        return
    calls = [e for e in events if isinstance(e, ModelCallFinished) and e.usage is not None]
    assert result.total_input_tokens == sum(e.usage.input_tokens for e in calls if e.usage)
    assert result.total_output_tokens == sum(e.usage.output_tokens for e in calls if e.usage)
    assert result.sub_calls == sum(isinstance(e, SubcallStarted) for e in events)
    assert sum(isinstance(e, SubcallFinished) for e in events) == result.sub_calls


def one_run(case: Case) -> None:
    events: list[Event] = []
    subscribers = [s for s in (case.subscriber, events.append) if s is not None]
    engine = rlm.RLM(case.root, case.sub, max_depth=case.max_depth, max_iterations=10)
    result: rlm.RLMResult | None = None
    try:
        if case.cancel_after is None:
            result = engine.run("q", "context", on_event=subscribers)
        else:

            async def cancelled() -> rlm.RLMResult:
                task = asyncio.create_task(engine.arun("q", "context", on_event=subscribers))
                await asyncio.sleep(case.cancel_after or 0)
                task.cancel()
                return await task

            result = asyncio.run(cancelled())
    except case.raises:
        pass
    except rlm.RLMError as exc:  # an error the case did not expect: show what happened
        raise AssertionError(f"{case.name}: {exc!r}") from exc
    check(case, events, result)


def test_two_hundred_runs_ending_every_way_leave_nothing_behind() -> None:
    rng = random.Random(18)
    one_run(Case("warm-up", ScriptedModel(["FINAL(1)"])))
    before = Snapshot.take()
    kinds: dict[str, int] = {}
    for _ in range(RUNS):
        case = make_case(rng)
        kinds[case.name] = kinds.get(case.name, 0) + 1
        one_run(case)
    assert len(kinds) == 8, kinds
    before.assert_clean()
