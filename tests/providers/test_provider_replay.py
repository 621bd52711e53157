"""A cassette records real SDK traffic once, then replays it with no request sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlm
from rlm.testing.cassette import Cassette
from rlm.testing.server import FakeLLMServer


def test_cassette_over_a_real_adapter_sends_each_request_once(
    make_model: Callable[..., Any], server: FakeLLMServer, tmp_path: Path
) -> None:
    server.push(
        "```repl\nprint(llm_query('Name a colour.'))\n```",
        "teal",
        "FINAL(teal it is)",
    )
    path = tmp_path / "tape.jsonl"
    with Cassette(path, make_model()) as tape:
        first = rlm.run("Pick a colour", "ctx", model=tape, repl="inprocess")
    assert first.answer == "teal it is"
    sent = len(server.requests)
    assert sent == 3

    # The same model (name, window) but no server replies left: all of it from the file.
    with Cassette(path, make_model(), mode="none") as tape:
        again = rlm.run("Pick a colour", "ctx", model=tape, repl="inprocess")
    assert again.answer == first.answer
    assert again.total_input_tokens == first.total_input_tokens
    assert again.cost_usd == first.cost_usd
    assert len(server.requests) == sent
    assert tape.replayed == 3


def test_a_cassette_replays_without_the_model_or_a_key(
    make_model: Callable[..., Any], server: FakeLLMServer, tmp_path: Path
) -> None:
    # CI replays with no API key: the cassette must still present the recorded model's
    # identity (name, provider, context window), which shapes the prompt.
    server.push("```repl\nprint(llm_query('Name a colour.'))\n```", "teal", "FINAL(teal it is)")
    path = tmp_path / "tape.jsonl"
    model = make_model()
    assert model.context_window  # a known model: its window is in the system prompt
    with Cassette(path, model) as tape:
        first = rlm.run("Pick a colour", "ctx", model=tape, repl="inprocess")
    for replayed_with in (None, f"{model.provider}/{model.name}"):
        with Cassette(path, replayed_with, mode="none") as tape:
            assert (tape.name, tape.provider, tape.context_window) == (
                model.name,
                model.provider,
                model.context_window,
            )
            again = rlm.run("Pick a colour", "ctx", model=tape, repl="inprocess")
        assert again.answer == first.answer and tape.replayed == 3
