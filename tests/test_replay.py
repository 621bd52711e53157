"""Replay: a recorded run answers a new run with zero model calls, and refuses clearly what
the recording does not hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlm
from rlm import ModelRequest
from rlm.errors import ConfigurationError, ReplayError
from rlm.telemetry import TrajectoryRecorder, load_trajectory
from rlm.testing import FunctionModel
from rlm.testing.cassette import Cassette
from rlm.testing.replay import ReplayModel

CONTEXT = "alpha:1\nbeta:2\ngamma:3\ndelta:4"


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


class Player:
    """One model for the root, its plain sub-calls and its child runs (depth 2, batches)."""

    def __init__(self) -> None:
        self.model = FunctionModel(self.reply, name="player")

    def reply(self, request: ModelRequest) -> str:
        if request.purpose == "subcall":
            return "len=" + str(len(request.messages[-1].content))
        depth = request.metadata.get("rlm.depth")
        turns = len(request.messages)
        if depth == "1":
            return code("n = context.count(':')\nprint(n)") if turns == 2 else "FINAL_VAR(n)"
        if turns == 2:
            return code(
                "parts = context.split('\\n')\n"
                "sizes = llm_query_batched(parts)\n"
                "child = rlm_query(context[:15])\n"
                "print(sizes, child)"
            )
        return "FINAL_VAR(sizes)"


def record(path: Path, query: str = "Sizes?", context: str = CONTEXT) -> rlm.RLMResult:
    player = Player()
    with TrajectoryRecorder(path) as recorder:
        return rlm.run(
            query, context, model=player.model, max_depth=2, repl="inprocess", on_event=recorder
        )


def test_a_recorded_depth_two_run_replays_with_zero_model_calls(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    first = record(path)
    recorded = load_trajectory(path)
    assert first.answer is not None and first.sub_calls >= 5

    replay = ReplayModel.from_trajectory(path)
    again = rlm.run("Sizes?", CONTEXT, model=replay, max_depth=2, repl="inprocess")

    assert again.answer == first.answer
    assert again.iterations == first.iterations
    assert again.sub_calls == first.sub_calls
    # Every recorded call served exactly once, nothing live (there is no fallback).
    calls = sum(
        len(r.model_calls) + sum(len(s.model_calls) for s in r.subcalls)
        for r in recorded.all_runs()
    )
    assert replay.replayed == calls == len(replay.calls)
    assert replay.live == 0 and replay.unused() == []
    # Usage is the recorded usage, so cost and budgets see what the run cost.
    assert again.total_input_tokens == first.total_input_tokens


def test_a_changed_prompt_fails_strictly_with_a_readable_diff(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    record(path, query="Sizes?")
    replay = ReplayModel.from_trajectory(path)
    with pytest.raises(ReplayError) as caught:
        rlm.run("How big?", CONTEXT, model=replay, max_depth=2, repl="inprocess")
    message = str(caught.value)
    assert "the root request at r#1 differs from the recorded one" in message
    assert "at message 2 (user)" in message
    assert "-" in message and "Sizes?" in message and "+" in message and "How big?" in message
    assert "fallback=model" in message


def test_a_replay_over_another_context_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    record(path)
    replay = ReplayModel.from_trajectory(path)
    with pytest.raises(ReplayError, match=r"recorded over a str of 30 .* context is a str"):
        rlm.run("Sizes?", CONTEXT.upper(), model=replay, max_depth=2, repl="inprocess")
    assert replay.replayed == 0


def test_fallback_answers_what_the_recording_does_not_hold(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    record(path)
    live = Player()
    replay = ReplayModel.from_trajectory(path, fallback=live.model)
    # Same context, one extra line in the query: the root's requests are new, the
    # sub-calls' prompts are not.
    result = rlm.run("Sizes, please?", CONTEXT, model=replay, max_depth=2, repl="inprocess")
    assert result.answer is not None
    assert replay.live >= 2 and replay.replayed >= 4
    assert len(live.model.calls) == replay.live


def test_a_request_asked_more_often_than_recorded_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    record(path)
    replay = ReplayModel.from_trajectory(path)
    rlm.run("Sizes?", CONTEXT, model=replay, max_depth=2, repl="inprocess")
    with pytest.raises(ReplayError, match="every recorded reply was already served"):
        rlm.run("Sizes?", CONTEXT, model=replay, max_depth=2, repl="inprocess")


def test_the_trajectory_stores_each_message_once_and_reads_it_back_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    long_output = "x" * 30_000  # longer than events keep for logs
    model = FunctionModel(
        lambda r: code(f"print('{long_output}')") if len(r.messages) < 6 else "FINAL(done)",
        name="m",
    )
    with TrajectoryRecorder(path) as recorder:
        rlm.run(
            "q", "ctx", model=model, repl="inprocess", on_event=recorder, max_output_chars=40_000
        )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    starts = [line for line in lines if line["kind"] == "model_call_started"]
    refs = [m for s in starts for m in s["request"]["messages"] if "ref" in m]
    assert refs, "repeated history should be stored as references"
    # Every message text is on disk once: the system prompt appears in one line only.
    system = model.calls[0].messages[0].content
    assert sum(1 for line in path.read_text().splitlines() if system[:200] in line) == 1
    # Read back, each request is exactly what the model received, long texts whole.
    loaded = load_trajectory(path)
    requests = [c.request for c in loaded.root.model_calls]
    assert [r.messages for r in requests if r] == [c.messages for c in model.calls]
    assert loaded.root.model_calls[0].reply is not None
    assert any(len(m.content) > 30_000 for m in model.calls[-1].messages)


def test_cassette_records_once_then_replays(tmp_path: Path) -> None:
    path = tmp_path / "cassettes" / "sizes.jsonl"
    live = Player()
    with Cassette(path, live.model) as tape:
        assert tape.recording
        first = rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
    recorded_calls = len(live.model.calls)
    assert recorded_calls >= 6 and tape.live == recorded_calls

    with Cassette(path, live.model) as tape:
        assert not tape.recording
        again = rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
    assert again.answer == first.answer
    assert len(live.model.calls) == recorded_calls  # nothing paid twice
    assert tape.replayed == recorded_calls

    # CI mode: replay only, no model needed.
    with Cassette(path, mode="none") as tape:
        assert rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess").answer == (
            first.answer
        )


def test_cassette_new_mode_appends_new_requests(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    live = Player()
    with Cassette(path, live.model) as tape:
        rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
    before = len(live.model.calls)
    with Cassette(path, live.model, mode="new") as tape:
        rlm.run("Other?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
        assert tape.live == len(live.model.calls) - before > 0
    # Both queries now replay without the live model.
    for query in ("Sizes?", "Other?"):
        with Cassette(path, mode="none") as tape:
            assert rlm.run(query, CONTEXT, model=tape, max_depth=2, repl="inprocess").answer


def test_cassette_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="mode='none' only replays"):
        Cassette(tmp_path / "missing.jsonl", mode="none")
    with pytest.raises(ConfigurationError, match="no model to record from"):
        Cassette(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        Cassette(tmp_path / "x.jsonl", FunctionModel(str), mode="sometimes")  # type: ignore[arg-type]


def test_a_recorded_provider_error_is_raised_again(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"

    def flaky(request: ModelRequest) -> str:
        if request.purpose == "subcall":
            raise rlm.errors.RateLimitError("slow down", model="m")
        if len(request.messages) == 2:
            return code("print(llm_query('hi'))")
        return "FINAL(ok)"

    live = FunctionModel(flaky, name="m")
    with Cassette(path, live) as tape:
        first = rlm.run("q", "c", model=tape, repl="inprocess")
    with Cassette(path, mode="none") as tape:
        again = rlm.run("q", "c", model=tape, repl="inprocess")
    assert again.answer == first.answer == "ok"
    seen = again.history[0].executions[0]
    assert "RateLimitError: slow down" in (seen.error or "")
    assert seen.error == first.history[0].executions[0].error


def test_the_replay_docs_run() -> None:
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "replay-and-resume.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {"__name__": "docs_replay"}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)


def test_a_cassette_named_by_a_model_string_replays_without_an_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's form: Cassette(path, "openai/gpt-4o-mini"). CI replays it with no key.
    from rlm.providers.catalog import context_window

    path = tmp_path / "c.jsonl"
    live = Player()
    # Stands in for the real gpt-4o-mini the cassette was recorded with (same identity).
    live.model.name, live.model.context_window = "gpt-4o-mini", context_window("gpt-4o-mini")
    with Cassette(path, live.model) as tape:
        first = rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with Cassette(path, "openai/gpt-4o-mini") as tape:
        again = rlm.run("Sizes?", CONTEXT, model=tape, max_depth=2, repl="inprocess")
    assert again.answer == first.answer and tape.live == 0
    # Recording needs the real model, so a missing key is the error then.
    with pytest.raises(rlm.errors.MissingAPIKeyError):
        Cassette(tmp_path / "new.jsonl", "openai/gpt-4o-mini")
