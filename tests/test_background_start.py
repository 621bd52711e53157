"""The REPL starts beside the run's first model call, not before it (rlm.repl.background)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from _leaks import Snapshot

import rlm
from rlm import ModelRequest
from rlm.errors import SandboxUnavailableError
from rlm.events import Event, ModelCallStarted, RunFailed
from rlm.repl import InProcessRepl, ReplHost
from rlm.testing import FunctionModel, ScriptedModel


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


@pytest.fixture
def clean() -> Iterator[Snapshot]:
    before = Snapshot.take()
    yield before
    before.assert_clean()


class GatedRepl(InProcessRepl):
    """Starts only once `gate` is set (by the model's first call), or fails after 5 s."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def start(self, context: object, host: ReplHost) -> None:
        await asyncio.wait_for(self.gate.wait(), 5)
        await super().start(context, host)


async def test_the_repl_starts_while_the_first_model_call_is_made() -> None:
    gate = asyncio.Event()

    def reply(request: ModelRequest) -> str:
        if len(request.messages) == 2:
            gate.set()  # a REPL started before this call would still be waiting
            return code("n = len(context)")
        return "FINAL_VAR(n)"

    result = await rlm.arun("q", "12345", model=FunctionModel(reply), repl=lambda: GatedRepl(gate))
    assert result.answer == "5"


class FailingRepl(InProcessRepl):
    """Like a sandbox whose first worker cannot start: the failure comes after a wait."""

    async def start(self, context: object, host: ReplHost) -> None:
        await asyncio.sleep(0.05)
        raise SandboxUnavailableError("the sandbox cannot be built here: no namespaces")


def test_a_start_that_fails_during_the_first_model_call_ends_the_run_with_its_error() -> None:
    released = asyncio.Event()

    async def reply(request: ModelRequest) -> str:
        # Without the REPL's failure ending the run, this reply would answer it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), 20)
        return "FINAL(answered without the REPL)"

    events: list[Event] = []
    with pytest.raises(SandboxUnavailableError, match="no namespaces") as failed:
        rlm.run("q", "c", model=FunctionModel(reply), repl=FailingRepl, on_event=events.append)
    assert failed.value.result is not None and failed.value.result.stop_reason == "error"
    assert any(isinstance(e, ModelCallStarted) for e in events)  # it was in flight
    ends = [e for e in events if isinstance(e, RunFailed)]
    assert len(ends) == 1 and ends[0].error_type == "SandboxUnavailableError"


def test_a_start_that_fails_at_once_is_raised_before_any_model_call() -> None:
    class Refusing(InProcessRepl):
        async def start(self, context: object, host: ReplHost) -> None:
            raise SandboxUnavailableError("bubblewrap (bwrap) is not installed")

    model = ScriptedModel(["FINAL(x)"])
    with pytest.raises(SandboxUnavailableError, match="not installed"):
        rlm.run("q", "c", model=model, repl=Refusing)
    assert model.calls == []


def test_a_run_that_writes_no_code_leaves_no_worker_behind(clean: Snapshot) -> None:
    for _ in range(3):
        result = rlm.run("q", "c", model=ScriptedModel(["FINAL(no code needed)"]))
        assert result.answer == "no code needed"


def test_a_block_waiting_for_a_start_that_fails_gets_its_error() -> None:
    events: list[Event] = []
    model = ScriptedModel([code("x = 1"), "FINAL(x)"])
    with pytest.raises(SandboxUnavailableError, match="no namespaces") as failed:
        rlm.run("q", "c", model=model, repl=FailingRepl, on_event=events.append)
    assert failed.value.result is not None and failed.value.result.stop_reason == "error"
    assert len(model.calls) == 1  # the block waited for the REPL; no second turn
    assert [type(e).__name__ for e in events].count("RunFailed") == 1
