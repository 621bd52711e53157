"""Whole runs through the real SDK clients against the fake server."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

import rlm
from rlm.events import Event, ModelRetry
from rlm.providers import AnthropicModel, OpenAIModel, RetryPolicy
from rlm.providers.pricing import cost_usd
from rlm.strategies import ToolCallingParser
from rlm.testing.server import ErrorReply, FakeLLMServer, RecordedRequest, Reply

ModelFactory = Callable[..., Any]

COUNT_THEN_ANSWER = [
    "Let me look.\n```repl\nn = len(context)\nprint(n)\n```",
    "FINAL(42)",
]


def test_a_full_run_through_each_provider(make_model: ModelFactory, server: FakeLLMServer) -> None:
    server.push(*COUNT_THEN_ANSWER)
    model = make_model()

    result = rlm.run("How long is the context?", "x" * 42, model=model, repl="inprocess")

    assert result.answer == "42"
    assert result.stop_reason == "final"
    assert len(server.requests) == 2
    assert all(r.model == model.name for r in server.requests)
    # The second request carries what the code printed.
    assert "42" in server.requests[1].body.decode()
    usage = result.usage[model.name].usage
    assert usage.requests == 2
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert result.cost_usd is not None and result.cost_usd > 0
    server.assert_exhausted()


def test_run_cost_is_the_sum_of_priced_calls(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(
        Reply("```repl\nprint(1)\n```", input_tokens=2_000, output_tokens=100),
        Reply("FINAL(1)", input_tokens=2_500, output_tokens=20, cache_read_tokens=2_000),
    )
    model = make_model()

    result = rlm.run("q", "ctx", model=model, repl="inprocess")

    usage = result.usage[model.name].usage
    assert (usage.input_tokens, usage.output_tokens) == (4_500, 120)
    assert usage.cache_read_tokens == 2_000
    assert result.cost_usd == pytest.approx(cost_usd(model.name, usage))
    assert result.usage[model.name].cost_usd == pytest.approx(result.cost_usd)


def test_an_unpriced_model_costs_none_not_zero(server: FakeLLMServer) -> None:
    server.push("FINAL(done)")
    model = OpenAIModel("my-local-llama", base_url=server.openai_base_url)

    result = rlm.run("q", "ctx", model=model, repl="inprocess")

    assert result.answer == "done"
    assert result.cost_usd is None
    assert result.usage["my-local-llama"].usage.requests == 1


def test_strong_root_and_cheap_sub_model_on_different_providers(fast_retry: RetryPolicy) -> None:
    with FakeLLMServer() as root_server, FakeLLMServer() as sub_server:
        root_server.push(
            "```repl\nanswer = llm_query('Say hi')\nprint(answer)\n```",
            "FINAL_VAR(answer)",
        )
        sub_server.push(Reply("hi from haiku", input_tokens=10, output_tokens=4))
        root = OpenAIModel("gpt-4.1", base_url=root_server.openai_base_url, api_key="k")
        sub = AnthropicModel(
            "claude-haiku-4-5", base_url=sub_server.anthropic_base_url, api_key="k"
        )

        result = rlm.run("Greet", "ctx", model=root, sub_model=sub, repl="inprocess")

    assert result.answer == "hi from haiku"
    assert result.sub_calls == 1
    assert set(result.usage) == {"gpt-4.1", "claude-haiku-4-5"}
    assert result.usage["claude-haiku-4-5"].cost_usd == pytest.approx((10 * 1.0 + 4 * 5.0) / 1e6)
    assert sub_server.requests[0].json["messages"][0]["content"][0]["text"] == "Say hi"


def test_retries_appear_as_model_retry_events(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(
        ErrorReply(429, "slow down", headers={"retry-after-ms": "5"}),
        ErrorReply(503, "busy"),
        "FINAL(ok)",
    )
    events: list[Event] = []
    model = make_model()

    result = rlm.run("q", "ctx", model=model, repl="inprocess", on_event=events.append)

    assert result.answer == "ok"
    retries = [e for e in events if isinstance(e, ModelRetry)]
    assert [(r.attempt, r.error_type) for r in retries] == [
        (1, "RateLimitError"),
        (2, "ProviderUnavailableError"),
    ]
    assert retries[0].wait_s == pytest.approx(0.005)
    assert "slow down" in retries[0].error
    assert retries[0].model == model.name
    assert len(server.requests) == 3


def _tool_names(request: RecordedRequest, provider: str) -> list[str]:
    tools = request.json["tools"]
    if provider == "openai":
        return [t["function"]["name"] for t in tools]
    return [t["name"] for t in tools]  # Responses and Anthropic: flat


def test_tool_calling_end_to_end(
    provider: str, make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(
        Reply(tool_calls=[("execute_python", {"code": "total = sum(context)\nprint(total)"})]),
        Reply("Done.", tool_calls=[("final_answer", {"variable": "total"})]),
    )
    model = make_model()

    result = rlm.run(
        "Add them up", [1, 2, 3], model=model, repl="inprocess", parsing=ToolCallingParser()
    )

    assert result.answer == "6"
    first, second = server.requests
    assert _tool_names(first, provider) == ["execute_python", "final_answer"]
    # The code's output goes back as the result of the model's tool call.
    body = second.json
    if provider == "openai":
        assistant = next(m for m in body["messages"] if m["role"] == "assistant")
        call_id = assistant["tool_calls"][0]["id"]
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"])["code"].startswith(
            "total"
        )
        tool_message = next(m for m in body["messages"] if m["role"] == "tool")
        assert tool_message["tool_call_id"] == call_id
        assert "6" in tool_message["content"]
        schema = first.json["tools"][0]["function"]["parameters"]
    elif provider == "responses":
        call = next(i for i in body["input"] if i.get("type") == "function_call")
        assert json.loads(call["arguments"])["code"].startswith("total")
        output = next(i for i in body["input"] if i.get("type") == "function_call_output")
        assert output["call_id"] == call["call_id"] and "6" in output["output"]
        schema = first.json["tools"][0]["parameters"]
        assert first.json["tools"][0]["strict"] is False  # rlm's tools have optional fields
    else:
        assistant = next(m for m in body["messages"] if m["role"] == "assistant")
        tool_use = next(b for b in assistant["content"] if b["type"] == "tool_use")
        results = [
            b
            for m in body["messages"]
            if m["role"] == "user"
            for b in m["content"]
            if b["type"] == "tool_result"
        ]
        assert [r["tool_use_id"] for r in results] == [tool_use["id"]]
        assert "6" in results[0]["content"]
        schema = first.json["tools"][0]["input_schema"]
    assert schema["required"] == ["code"]


def test_bare_names_route_to_the_right_provider(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)

    for spec, cls, name in [
        ("gpt-4o-mini", OpenAIModel, "gpt-4o-mini"),
        ("o3-mini", OpenAIModel, "o3-mini"),
        ("openai/gpt-4.1", OpenAIModel, "gpt-4.1"),
        ("claude-haiku-4-5", AnthropicModel, "claude-haiku-4-5"),
        ("anthropic/claude-sonnet-4-5", AnthropicModel, "claude-sonnet-4-5"),
    ]:
        model = rlm.resolve_model(spec)
        assert isinstance(model, cls)
        assert model.name == name
        assert model.base_url.startswith(server.url)

    server.push("FINAL(routed)")
    result = rlm.run("q", "ctx", model="claude-haiku-4-5", repl="inprocess")
    assert result.answer == "routed"
    assert server.requests[0].path == "/v1/messages"


def test_register_provider_adds_a_prefix_in_one_line(server: FakeLLMServer) -> None:
    rlm.register_provider(
        "fakelocal", lambda name: OpenAIModel(name, base_url=server.openai_base_url)
    )
    server.push("FINAL(local)")

    result = rlm.run("q", "ctx", model="fakelocal/llama3.1:8b", repl="inprocess")

    assert result.answer == "local"
    assert server.requests[0].model == "llama3.1:8b"


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
async def test_a_client_passed_in_is_used_without_its_own_retries(
    provider_name: str, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.push(ErrorReply(500), ErrorReply(500))
    policy = dataclasses.replace(fast_retry, max_attempts=2)
    client: Any
    model: OpenAIModel | AnthropicModel
    if provider_name == "openai":
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="mine", max_retries=4)
        model = OpenAIModel("gpt-4o-mini", client=client, retry=policy)
    else:
        client = anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key="mine", max_retries=4
        )
        model = AnthropicModel("claude-haiku-4-5", client=client, retry=policy)

    with pytest.raises(rlm.errors.ProviderUnavailableError):
        await model.complete(rlm.ModelRequest(messages=(rlm.Message("user", "hi"),)))
    await client.close()

    # Two attempts by rlm, none by the SDK; the caller's client keeps its settings.
    assert len(server.requests) == 2
    assert client.max_retries == 4
    assert "mine" in json.dumps(server.requests[0].headers)


def test_a_user_client_of_the_wrong_kind_is_refused(server: FakeLLMServer) -> None:
    with (
        openai.OpenAI(base_url=server.openai_base_url, api_key="k") as sync_client,
        pytest.raises(rlm.ConfigurationError, match="AsyncOpenAI"),
    ):
        OpenAIModel("gpt-4o-mini", client=sync_client)  # type: ignore[arg-type]


def test_one_model_serves_many_runs_and_threads(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    # Each run has its own event loop; the adapter keeps a client per loop.
    server.handler = lambda request: "FINAL(again)"
    engine = rlm.RLM(make_model(), repl="inprocess")

    answers = [engine.run("q", "ctx").answer for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers += list(pool.map(lambda _: engine.run("q", "ctx").answer, range(4)))

    assert answers == ["again"] * 7
    assert len(server.requests) == 7
