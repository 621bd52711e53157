"""A cassette records real SDK traffic once, then replays it with no request sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlm
from rlm.testing.replay import Cassette
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
