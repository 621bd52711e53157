"""`RecordedRequest.view`: handlers of `FakeLLMServer` answer by prompt without parsing
any wire format; the view of a run's requests is the same whichever SDK sent them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import rlm
from rlm.strategies import ToolCallingParser
from rlm.testing.server import FakeLLMServer, RecordedRequest, Reply
from rlm.testing.view import RequestView, ViewMessage, view_of

ModelFactory = Callable[..., Any]
CODE = "```repl\nprint(len(context) * 2)\n```"


def run_and_view(make_model: ModelFactory, server: FakeLLMServer) -> list[RequestView]:
    """A two-turn run whose replies are chosen from the view alone."""

    def handler(request: RecordedRequest) -> str:
        # Answer by prompt: no wire format parsed here.
        return "FINAL(done)" if "[block 1]" in request.view.last_user else CODE

    server.handler = handler
    result = rlm.run("How long is it?", "abcdef", model=make_model(), repl="inprocess")
    assert result.answer == "done"
    return [r.view for r in server.requests]


def test_a_handler_reads_system_messages_and_last_user_text(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    first, second = run_and_view(make_model, server)

    assert first.system.startswith("You answer a query") and "llm_query" in first.system
    assert [m.role for m in first.messages] == ["user"]
    assert first.last_user.startswith("Query: How long is it?")
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1] == ViewMessage("assistant", CODE)
    assert second.last_user.rstrip() == "[block 1]\n12"
    assert "assistant: ```repl" in second.transcript


def test_the_view_is_the_same_for_every_wire_format() -> None:
    views: dict[str, list[RequestView]] = {}
    for provider in ("openai", "responses", "anthropic"):
        with FakeLLMServer() as server:
            options = {"api": "chat" if provider == "openai" else "responses"}
            model = (
                rlm.providers.AnthropicModel("m", base_url=server.anthropic_base_url, api_key="k")
                if provider == "anthropic"
                else rlm.providers.OpenAIModel(
                    "m", base_url=server.openai_base_url, api_key="k", **options
                )
            )
            views[provider] = run_and_view(lambda model=model: model, server)
    assert views["openai"] == views["responses"] == views["anthropic"]


@pytest.mark.parametrize("provider", ["openai", "responses", "anthropic"])
def test_tool_calls_and_results_read_the_same_on_every_format(
    provider: str, make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(
        Reply("Counting.", tool_calls=[("execute_python", {"code": "print(len(context))"})]),
        Reply("", tool_calls=[("final_answer", {"answer": "6"})]),
    )
    result = rlm.run("q", "abcdef", model=make_model(), repl="inprocess",
                     parsing=ToolCallingParser())  # fmt: skip
    assert result.answer == "6"

    view = server.requests[1].view
    assert view.tools == ("execute_python", "final_answer")
    assert [m.role for m in view.messages] == ["user", "assistant", "tool"]
    assert view.messages[1].text == 'Counting.\nexecute_python({"code": "print(len(context))"})'
    assert view.messages[2].text.startswith("[block 1]\n6")
    assert view.last_user.startswith("Query: q")


def test_a_body_that_is_not_a_request_gives_an_empty_view() -> None:
    assert view_of("openai", {"messages": "nope"}) == RequestView()
    assert view_of(None, {"messages": [{"role": "user", "content": "x"}]}) == RequestView()
    assert view_of("anthropic", [1, 2]).last_user == ""
    assert view_of("responses", {"input": "just text"}).last_user == "just text"
