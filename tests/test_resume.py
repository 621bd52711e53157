"""Resume: a run cut off at any point continues from its trajectory without sending a
recorded request again, and ends as an uninterrupted run does."""

from __future__ import annotations

from pathlib import Path

import pytest

import rlm
from rlm import Budget, ModelRequest
from rlm.errors import ReplayError
from rlm.telemetry import TrajectoryRecorder
from rlm.testing import FunctionModel
from rlm.testing.replay import request_key

CONTEXT = "\n".join(f"row {i}: value {i * 7}" for i in range(12))


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def reply(request: ModelRequest) -> str:
    """A deterministic model for a depth-2 run with a batch, 4 root iterations."""
    if request.purpose == "subcall":
        return str(sum(int(w) for w in request.messages[-1].content.split() if w.isdigit()))
    depth = request.metadata.get("rlm.depth")
    turns = (len(request.messages) - 2) // 2 + 1
    if depth == "1":
        return code("n = len(context.split())\nprint(n)") if turns == 1 else "FINAL_VAR(n)"
    if request.purpose == "final":
        return "FINAL(out of turns)"
    steps = {
        1: code("rows = context.splitlines()\nprint(len(rows))"),
        2: code("sums = llm_query_batched(rows[:6])\nprint(sums)"),
        3: code(
            "words = rlm_query(rows[0])\ntotal = sum(int(s) for s in sums)\nprint(total, words)"
        ),
    }
    return steps.get(turns, "FINAL_VAR(total)")


def run_recorded(path: Path, **options: object) -> rlm.RLMResult:
    model = FunctionModel(reply, name="m")
    with TrajectoryRecorder(path) as recorder:
        return rlm.run(
            "Sum it",
            CONTEXT,
            model=model,
            max_depth=2,
            repl="inprocess",
            on_event=recorder,
            **options,
        )  # type: ignore[arg-type]


def cut(path: Path, keep_lines: int, tail: str = '{"kind":"model_ca') -> Path:
    """The file as a kill -9 after `keep_lines` lines (mid-way through the next) leaves it."""
    lines = path.read_text().splitlines(keepends=True)
    cut_path = path.with_name(f"cut-{keep_lines}.jsonl")
    cut_path.write_text("".join(lines[:keep_lines]) + tail)
    return cut_path


def recorded_keys(path: Path) -> list[str]:
    from rlm.testing.replay import load_recorded_calls

    return [request_key(c.request) for c in load_recorded_calls(path)]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rlm.RLMResult]:
    path = tmp_path_factory.mktemp("resume") / "full.jsonl"
    return path, run_recorded(path)


def test_a_run_cut_anywhere_resumes_without_paying_twice(
    full: tuple[Path, rlm.RLMResult],
) -> None:
    path, whole = full
    assert whole.answer is not None and whole.sub_calls == 7
    total_lines = len(path.read_text().splitlines())
    # Cut points spread over the run: during the first call, in the batch, in the child
    # run, and just before the end.
    for keep in sorted(
        {3, total_lines // 3, total_lines // 2, (2 * total_lines) // 3, total_lines - 3}
    ):
        cut_path = cut(path, keep)
        before = recorded_keys(cut_path)
        live = FunctionModel(reply, name="m")
        resumed = rlm.resume(cut_path, context=CONTEXT, model=live, repl="inprocess")
        assert resumed.answer == whole.answer, keep
        assert resumed.iterations == whole.iterations
        assert resumed.sub_calls == whole.sub_calls
        assert resumed.total_input_tokens == whole.total_input_tokens
        # No request recorded before the cut reached the live model again.
        sent = [request_key(r) for r in live.calls]
        assert not set(sent) & set(before), keep
        info = resumed.resumed
        assert info is not None and info.replayed_calls == len(before)
        assert info.live_calls == len(sent) and info.differences == ()


def test_resume_defaults_to_the_recorded_limits_and_refuses_another_context(
    full: tuple[Path, rlm.RLMResult],
) -> None:
    path, _ = full
    with pytest.raises(ReplayError, match=r"recorded over a str of .* context given is"):
        rlm.resume(
            path, context=CONTEXT + "!", model=FunctionModel(reply, name="m"), repl="inprocess"
        )


def test_changed_output_on_rerun_is_reported_and_told_to_the_model(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    seen: list[ModelRequest] = []

    def clocky(request: ModelRequest) -> str:
        seen.append(request)
        turns = len(request.messages)
        if turns == 2:
            return code("import time\nstamp = time.time_ns()\nprint(stamp)")
        if turns == 4:
            return code("print('more')")
        return "FINAL(done)"

    with TrajectoryRecorder(path) as recorder:
        rlm.run(
            "q", "ctx", model=FunctionModel(clocky, name="m"), repl="inprocess", on_event=recorder
        )
    # Kill before the last call finished: keep the file up to the 3rd model call start.
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if '"kind":"model_call_started"' in line]
    cut_path = tmp_path / "cut.jsonl"
    cut_path.write_text("".join(lines[: starts[2] + 1]))

    seen.clear()
    result = rlm.resume(
        cut_path, context="ctx", model=FunctionModel(clocky, name="m"), repl="inprocess"
    )
    assert result.answer == "done"
    assert result.resumed is not None and len(result.resumed.differences) == 1
    assert "r#2" in result.resumed.differences[0]
    # The one live call (the one in flight at the kill) carries the note.
    assert len(seen) == 1
    assert "this run was resumed" in seen[0].messages[-1].content


def test_a_budget_stop_resumes_with_a_larger_budget(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    stopped = run_recorded(path, budget=Budget(max_subcalls=3))
    assert stopped.stop_reason in ("budget", "final")
    live = FunctionModel(reply, name="m")
    before = recorded_keys(path)
    resumed = rlm.resume(
        path, context=CONTEXT, model=live, repl="inprocess", budget=Budget(max_subcalls=50)
    )
    assert resumed.resumed is not None and resumed.resumed.replayed_calls == len(before)
    assert not {request_key(r) for r in live.calls} & set(before)
    assert resumed.sub_calls >= stopped.sub_calls


def test_the_engine_resumes_async_too(full: tuple[Path, rlm.RLMResult]) -> None:
    import asyncio

    path, whole = full
    engine = rlm.RLM(FunctionModel(reply, name="m"), max_depth=2, repl="inprocess")
    result = asyncio.run(engine.aresume(cut(path, 10), context=CONTEXT))
    assert result.answer == whole.answer and result.resumed is not None


def test_recorded_tool_calls_are_answered_from_the_file(tmp_path: Path) -> None:
    """A resume does not call a tool again for a call the recording holds (a tool may
    charge, send or write); a recorded tool error comes back as the same error."""
    calls: list[str] = []

    def lookup(customer: str) -> dict[str, object]:
        """Look a customer up."""
        calls.append(customer)
        if customer == "ghost":
            raise KeyError("no such customer")
        return {"name": customer, "plan": "annual"}

    def model_reply(request: ModelRequest) -> str:
        turns = len(request.messages)
        if turns == 2:
            return code("a = lookup('acme')\nprint(a)")
        if turns == 4:
            return code("try:\n    lookup('ghost')\nexcept Exception as e:\n    print('err', e)")
        if turns == 6:
            return code("b = lookup('globex')\nprint(b['plan'])")
        return "FINAL_VAR(b)"

    path = tmp_path / "run.jsonl"
    with TrajectoryRecorder(path) as recorder:
        whole = rlm.run(
            "q",
            "ctx",
            model=FunctionModel(model_reply, name="m"),
            repl="inprocess",
            tools=[lookup],
            on_event=recorder,
        )
    assert calls == ["acme", "ghost", "globex"]
    # Killed while the 4th model call was in flight: all three tool calls are recorded.
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if '"kind":"model_call_started"' in line]
    cut_path = tmp_path / "cut.jsonl"
    cut_path.write_text("".join(lines[: starts[3] + 1]))

    with pytest.raises(ReplayError, match=r"tool\(s\) lookup.*same tools="):
        rlm.resume(
            cut_path, context="ctx", model=FunctionModel(model_reply, name="m"), repl="inprocess"
        )
    calls.clear()
    resumed = rlm.resume(
        cut_path,
        context="ctx",
        model=FunctionModel(model_reply, name="m"),
        repl="inprocess",
        tools=[lookup],
    )
    assert calls == []
    assert resumed.answer == whole.answer
    assert resumed.resumed is not None and resumed.resumed.replayed_tool_calls == 3
    assert resumed.history[1].executions[0].stdout == whole.history[1].executions[0].stdout


def test_a_session_with_tools_and_a_depth_two_batch_replays_with_zero_requests(
    tmp_path: Path,
) -> None:
    from rlm.testing import ReplayModel

    def note(text: str) -> str:
        """Echo a note."""
        return text.upper()

    def play(request: ModelRequest) -> str:
        if request.purpose == "subcall":
            return "sub:" + request.messages[-1].content[:10]
        if request.metadata.get("rlm.depth") == "1":
            return "FINAL(child done)"
        last = request.messages[-1].content
        if "[block" not in last:
            if "second" in last:
                return code("r2 = note(str(len(parts)))\nprint(r2)")
            return code(
                "parts = llm_query_batched(['a', 'b', 'c'])\nc = rlm_query('go')\n"
                "print(parts, c, note('x'))"
            )
        return "FINAL(turn over)"

    path = tmp_path / "session.jsonl"
    live = FunctionModel(play, name="m")
    engine = rlm.RLM(live, max_depth=2, repl="inprocess", tools=[note])
    with (
        TrajectoryRecorder(path) as recorder,
        engine.session(context="ctx", on_event=recorder) as chat,
    ):
        first = [chat.run("first question"), chat.run("second question")]
    recorded = len(live.calls)

    replay = ReplayModel.from_trajectory(path)
    again_engine = rlm.RLM(replay, max_depth=2, repl="inprocess", tools=[note])
    with again_engine.session(context="ctx") as chat:
        again = [chat.run("first question"), chat.run("second question")]
    assert [r.answer for r in again] == [r.answer for r in first]
    assert replay.replayed == recorded and replay.live == 0 and replay.unused() == []


def test_a_resumed_run_killed_again_resumes_again_from_the_same_file(
    full: tuple[Path, rlm.RLMResult],
) -> None:
    path, whole = full
    lines = path.read_text().splitlines(keepends=True)
    first_cut = cut(path, len(lines) // 3)  # ends in a cut-off line
    first = FunctionModel(reply, name="m")
    # The resume appends to the file it resumes (what `rlm run --resume` does).
    with TrajectoryRecorder(first_cut, append=True) as recorder:
        rlm.resume(first_cut, context=CONTEXT, model=first, repl="inprocess", on_event=recorder)
    from rlm.telemetry.trajectory import read_events

    # The cut-off line was dropped before the second attempt's lines were added.
    assert read_events(first_cut)[1] is False
    both = first_cut.read_text().splitlines(keepends=True)
    # Killed again, mid-way through the second attempt.
    again = first_cut.with_name("again.jsonl")
    keep = len(lines) // 3 + (len(both) - len(lines) // 3) // 2
    again.write_text("".join(both[:keep]))

    from rlm.replay import describe_point, load_resume_point

    point = load_resume_point(again)
    places = [c.request.metadata["rlm.call_path"] for c in point.calls]
    # The second attempt's replayed calls are not counted (or served) twice.
    assert len(places) == len(set(places)) and point.attempts == 2
    assert f"after {len(places)} recorded model call(s) over 2 attempt(s)" in (
        describe_point(point)
    )
    live = FunctionModel(reply, name="m")
    resumed = rlm.resume(again, context=CONTEXT, model=live, repl="inprocess")
    assert resumed.answer == whole.answer and resumed.sub_calls == whole.sub_calls
    assert not {request_key(r) for r in live.calls} & set(recorded_keys(again))
    assert resumed.resumed is not None and resumed.resumed.replayed_calls == len(places)


def test_a_run_ended_by_a_provider_failure_resumes_by_asking_again(
    tmp_path: Path, full: tuple[Path, rlm.RLMResult]
) -> None:
    from rlm.errors import ProviderUnavailableError

    _, whole = full
    path = tmp_path / "failed.jsonl"

    def down_at_turn_4(request: ModelRequest) -> str:
        root = request.purpose == "root" and request.metadata.get("rlm.depth") == "0"
        if root and len(request.messages) >= 8:
            raise ProviderUnavailableError("overloaded", model="m")
        return reply(request)

    with pytest.raises(ProviderUnavailableError), TrajectoryRecorder(path) as recorder:
        rlm.run(
            "Sum it",
            CONTEXT,
            model=FunctionModel(down_at_turn_4, name="m"),
            max_depth=2,
            repl="inprocess",
            on_event=recorder,
        )
    live = FunctionModel(reply, name="m")
    resumed = rlm.resume(path, context=CONTEXT, model=live, repl="inprocess")
    assert resumed.answer == whole.answer
    # The failed request is asked again (it never had an answer); nothing else is.
    assert [len(r.messages) for r in live.calls] == [8]


def test_a_session_trajectory_is_refused_before_any_call(tmp_path: Path) -> None:
    # A turn's prompt carries the earlier turns and its code their variables: resumed as a
    # lone run it matched no recorded request and went live for every iteration.
    path = tmp_path / "chat.jsonl"

    def chat_model(request: ModelRequest) -> str:
        second = "Query: second" in request.messages[1].content
        if len(request.messages) == 2:
            return "```repl\ny = x * 2\n```" if second else "```repl\nx = 21\n```"
        return "FINAL_VAR(y)" if second else "FINAL_VAR(x)"

    model = FunctionModel(chat_model, name="m")
    engine = rlm.RLM(model, repl="inprocess")
    with TrajectoryRecorder(path) as recorder, engine.session("c", on_event=recorder) as chat:
        assert [chat.run("first").answer, chat.run("second").answer] == ["21", "42"]
    calls = len(model.calls)
    with pytest.raises(rlm.errors.TrajectoryError, match="session"):
        rlm.resume(path, context="c", model=model, repl="inprocess")
    assert len(model.calls) == calls


def test_a_run_whose_worker_crashed_resumes_with_the_same_feedback(tmp_path: Path) -> None:
    """Re-running a recorded block that killed the sandbox worker kills it again; the
    restart note the model saw is the same, so the recorded replies still match."""

    def crashy(request: ModelRequest) -> str:
        turns = len(request.messages)
        if turns == 2:
            return code("x = 1\nimport os\nos._exit(3)")
        if turns == 4:
            return code("y = 41 + 1\nprint(y)")
        return "FINAL_VAR(y)"

    path = tmp_path / "run.jsonl"
    with TrajectoryRecorder(path) as recorder:
        whole = rlm.run("q", "ctx", model=FunctionModel(crashy, name="m"), on_event=recorder)
    assert whole.answer == "42" and whole.history[0].executions[0].restarted
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if '"kind":"model_call_started"' in line]
    cut_path = tmp_path / "cut.jsonl"
    cut_path.write_text("".join(lines[: starts[2] + 1]))  # killed during the last call

    live = FunctionModel(crashy, name="m")
    resumed = rlm.resume(cut_path, context="ctx", model=live)
    assert resumed.answer == "42"
    assert len(live.calls) == 1  # only the call in flight at the kill
    assert resumed.resumed is not None and resumed.resumed.differences == ()
