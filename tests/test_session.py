"""Sessions: turns that share one REPL, through every REPL and every model path."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import pytest
from _llm_harness import MODEL_KINDS, REPLS, Seen, code, harness

import rlm
from rlm.errors import SessionError
from rlm.events import Event, RunStarted
from rlm.output import OutputSpec
from rlm.telemetry import TrajectoryRecorder, load_trajectory
from rlm.viewer.tree import build_tree

CUSTOMERS = [
    {"name": "ada", "churned": "March", "plan": "annual"},
    {"name": "bob", "churned": "March", "plan": "monthly"},
    {"name": "cy", "churned": None, "plan": "annual"},
    {"name": "dee", "churned": "March", "plan": "annual"},
    {"name": "eve", "churned": "April", "plan": "monthly"},
]
FIRST_CODE = 'churned = [c["name"] for c in context if c["churned"] == "March"]\nprint(churned)'


def conversation(seen: Seen) -> str:
    """Answers the three turns of the issue's example, one query at a time."""
    if "Query: Which customers churned in March?" in seen.last:
        return code(FIRST_CODE)
    if seen.last.startswith("[block 1]") and "This is turn" not in seen.text:
        return code('FINAL(", ".join(churned))')
    if "Query: And how many of them were on the annual plan?" in seen.last:
        # `churned` is turn 1's variable: a NameError here means the REPL was not kept.
        return code(
            'annual = [c["name"] for c in context if c["name"] in churned '
            'and c["plan"] == "annual"]\nFINAL(len(annual))'
        )
    if "Query: Compare with this list" in seen.last:
        return code('FINAL(", ".join(sorted(set(churned) & set(context_1))))')
    raise AssertionError(f"unexpected request: {seen.last[-300:]}")


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_three_turns_share_the_repl(kind: str, repl: str) -> None:
    events: list[Event] = []
    other = ["bob", "dee", "zed"]
    with harness(kind, conversation) as h:
        engine = rlm.RLM(h.model, repl=repl)
        with engine.session(context=CUSTOMERS, on_event=events.append) as chat:
            first = chat.run("Which customers churned in March?")
            second = chat.run("And how many of them were on the annual plan?")
            third = chat.run("Compare with this list", context=other)

    march = [c["name"] for c in CUSTOMERS if c["churned"] == "March"]
    assert first.answer == ", ".join(march)
    assert second.answer == str(sum(c["plan"] == "annual" for c in CUSTOMERS if c["name"] in march))
    assert third.answer == ", ".join(sorted(set(march) & set(other)))
    assert [r.stop_reason for r in chat.results] == ["final"] * 3
    assert chat.contexts == ("context", "context_1")

    # Turn 2 opens with turn 1's query and answer and the variables, not its transcript.
    opening = next(s for s in h.requests if "Query: And how many" in s.last).last
    assert "Which customers churned in March?" in opening
    assert f"Answer: {first.answer}" in opening
    assert re.search(r"^churned: list, len=3$", opening, re.M)
    assert FIRST_CODE not in opening and "print(churned)" not in opening
    opening = next(s for s in h.requests if "Query: Compare" in s.last).last
    assert "`context_1`: list of 3 items (str, str, str)" in opening
    assert "(new in this turn)" in opening

    # Usage and cost are the sums over the turns; every event names the session.
    for model_name, entry in chat.usage.items():
        turns = [r.usage[model_name].usage for r in chat.results]
        assert entry.usage.input_tokens == sum(u.input_tokens for u in turns)
        assert entry.usage.requests == sum(u.requests for u in turns) == len(h.requests)
    costs = [r.cost_usd for r in chat.results]
    assert chat.cost_usd == (None if None in costs else pytest.approx(sum(costs)))  # type: ignore[arg-type]
    assert {e.session_id for e in events} == {chat.session_id}
    assert [e.run_id for e in events if isinstance(e, RunStarted)] == [
        r.run_id for r in chat.results
    ]


def lost_and_found(seen: Seen) -> str:
    if "Query: remember" in seen.last:
        return code("secret = 41\nFINAL(secret + 1)")
    if "Query: recall" in seen.last:
        # The worker died between turns: the prompt says so, and `context_1` is back.
        assert "every variable of earlier turns is gone" in seen.last
        assert "Variables in the REPL now" not in seen.last
        return code("import os\nos._exit(3)")
    if "REPL worker was restarted" in seen.last:
        return code("print('secret' in globals())\nFINAL(sum(context_1))")
    raise AssertionError(f"unexpected request: {seen.last[-300:]}")


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_worker_that_dies_between_and_during_turns_is_replaced(kind: str) -> None:
    with harness(kind, lost_and_found) as h:
        engine = rlm.RLM(h.model, repl="subprocess")
        with engine.session(context="docs") as chat:
            assert chat.run("remember", context=[10, 20, 12]).answer == "42"
            conn = chat._repl._conn  # type: ignore[union-attr]
            os.killpg(conn.process.popen.pid, signal.SIGKILL)
            # Dead once its end of the pipe is closed: bwrap's init takes the worker down
            # a moment after bwrap itself.
            while conn.gone is None:
                time.sleep(0.01)
            result = chat.run("recall")
        # Closing the session stops the (replacement) worker.
        assert chat.closed
    assert result.answer == "42"
    blocks = [e for it in result.history for e in it.executions]
    assert [b.restarted for b in blocks] == [True, False]  # os._exit during the turn
    assert blocks[1].stdout.strip() == "False"


def test_closing_the_session_stops_its_worker() -> None:
    with harness("scripted", lambda seen: "FINAL(1)") as h:
        with rlm.Session(rlm.RLM(h.model, repl="subprocess"), context="c") as chat:
            chat.run("q")
            worker = chat._repl._conn.process.popen  # type: ignore[union-attr]
        assert worker.wait(timeout=30) is not None
        with pytest.raises(SessionError, match="closed"):
            chat.run("again")


def gated(started: threading.Event, release: threading.Event):  # type: ignore[no-untyped-def]
    async def brain(seen: Seen) -> str:
        if "Query: slow" in seen.last:
            started.set()
            await asyncio.to_thread(release.wait)  # the server and the test share no loop
        return "FINAL(done)"

    return brain


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
async def test_a_second_turn_while_one_runs_is_refused(kind: str, repl: str) -> None:
    started, release = threading.Event(), threading.Event()
    with harness(kind, gated(started, release)) as h:
        async with rlm.Session(rlm.RLM(h.model, repl=repl), context="c") as chat:
            slow = asyncio.ensure_future(chat.arun("slow"))
            await asyncio.to_thread(started.wait)
            with pytest.raises(SessionError, match="already running"):
                await chat.arun("second")
            release.set()
            assert (await slow).answer == "done"
            assert (await chat.arun("third")).answer == "done"  # the session goes on
    assert len(chat.results) == 2


@pytest.mark.parametrize("repl", REPLS)
async def test_the_next_turn_after_leaving_a_turns_stream_runs(repl: str) -> None:
    # Leaving `async for` cancels the turn; the next turn waits for that cleanup instead
    # of being refused as a concurrent one, and the REPL's variables are still there.
    release = threading.Event()
    replies = iter([code("x = 21"), "FINAL_VAR(x)", None, code("FINAL(x * 2)")])

    async def reply(seen: Seen) -> str:
        step = next(replies)
        if step is None:  # the turn whose stream is left waits here
            await asyncio.to_thread(release.wait)
            return "FINAL(late)"
        return step

    with harness("scripted", reply) as h:
        async with rlm.RLM(h.model, repl=repl).session(context="c") as chat:
            await chat.arun("first")
            async for event in chat.stream("slow"):
                if event.kind == "model_call_started":
                    break
            try:
                assert (await chat.arun("twice")).answer == "42"
            finally:
                release.set()
    assert [r.answer for r in chat.results] == ["21", "42"]  # the cancelled turn raised


def test_blocking_run_from_two_threads_is_refused() -> None:
    started, release = threading.Event(), threading.Event()
    with harness("scripted", gated(started, release)) as h:
        chat = rlm.RLM(h.model, repl="inprocess").session(context="c")
        with chat:
            other = threading.Thread(target=lambda: chat.run("slow"))
            other.start()
            started.wait()
            with pytest.raises(SessionError, match="already running"):
                chat.run("second")
            release.set()
            other.join()
    assert [r.answer for r in chat.results] == ["done"]


async def test_stream_and_trajectory_of_a_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "chat.jsonl"
    replies = iter([code("x = 2"), "FINAL_VAR(x)", code("FINAL(x * 21)")])
    with harness("scripted", lambda seen: next(replies)) as h, TrajectoryRecorder(path) as rec:
        async with rlm.RLM(h.model, repl="inprocess").session("c", on_event=rec) as chat:
            await chat.arun("first")
            kinds = [e.kind async for e in chat.stream("second")]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    trajectory = load_trajectory(path)
    assert [r.answer for r in trajectory.sessions[chat.session_id]] == ["2", "42"]
    assert [(n["turn"], n["query"]) for n in build_tree(trajectory.events)] == [
        (1, "first"),
        (2, "second"),
    ]


async def test_a_session_lives_on_one_event_loop() -> None:
    with harness("scripted", lambda seen: "FINAL(1)") as h:
        chat = rlm.Session(rlm.RLM(h.model, repl="inprocess"), context="c")
        await chat.arun("q")
        with pytest.raises(SessionError, match=r"await chat\.arun"):
            chat.run("blocking")
        await chat.aclose()
        await chat.aclose()  # twice is fine


@pytest.mark.parametrize("repl", REPLS)
def test_a_session_calls_tools_and_types_its_answers(repl: str) -> None:
    plans = {c["name"]: c["plan"] for c in CUSTOMERS}

    def plan_of(name: str) -> str:
        """The plan a customer is on."""
        return plans[name]

    replies = iter(
        [
            code('found = {n: plan_of(n) for n in ["ada", "bob"]}\nFINAL(found)'),
            code("FINAL(len(found))"),
        ]
    )
    with harness("scripted", lambda seen: next(replies)) as h:
        engine = rlm.RLM(h.model, repl=repl, tools=[plan_of])
        with engine.session(CUSTOMERS) as chat:
            first = chat.run("Which plans are ada and bob on?")
            second = chat.run("How many did you look up?", output_type=int)
    assert first.output == {"ada": "annual", "bob": "monthly"} and first.tool_calls == 2
    assert second.output == 2 and second.answer == "2"
    # The later turn is told both the conversation so far and the shape of its answer.
    opening = h.requests[1].last
    assert "Which plans are ada and bob on?" in opening
    assert OutputSpec(int).instructions() in opening and "plan_of" in h.requests[1].text
