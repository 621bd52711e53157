"""Long and thinking generations through the real `anthropic` SDK: streamed, assembled,
thinking carried back, and a broken stream reported rather than paid for again."""

from __future__ import annotations

import json

import anthropic
import pytest
from pydantic import TypeAdapter

import rlm
from rlm.errors import ConfigurationError, IncompleteReplyError
from rlm.events import ModelRetry
from rlm.providers.anthropic import AnthropicModel, build_messages
from rlm.providers.anthropic_stream import needs_streaming
from rlm.providers.retry import RetryPolicy
from rlm.strategies.parsing import ToolCallingParser
from rlm.testing.server import FakeLLMServer, Reply
from rlm.testing.wire import unseal
from tests.providers.conftest import FAST_RETRY

HELLO = rlm.ModelRequest((rlm.Message("user", "hi"),))


def _model(
    server: FakeLLMServer, name: str = "claude-sonnet-4-6", **options: object
) -> AnthropicModel:
    options.setdefault("retry", FAST_RETRY)
    return AnthropicModel(
        name,
        base_url=server.anthropic_base_url,
        api_key="k",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("model", "max_tokens"),
    [
        ("claude-sonnet-4-6", 21_333),
        ("claude-sonnet-4-6", 21_334),
        ("claude-sonnet-4-6", 64_000),
        ("claude-opus-4-0", 8_192),
        ("claude-opus-4-0", 8_193),
        ("claude-opus-4-1-20250805", 8_193),
    ],
)
def test_streaming_is_chosen_exactly_where_the_sdk_would_refuse(
    model: str, max_tokens: int
) -> None:
    client = anthropic.Anthropic(api_key="k")
    from anthropic._constants import MODEL_NONSTREAMING_TOKENS

    try:
        client._calculate_nonstreaming_timeout(max_tokens, MODEL_NONSTREAMING_TOKENS.get(model))
        sdk_refuses = False
    except ValueError:
        sdk_refuses = True

    assert needs_streaming(model, max_tokens) is sdk_refuses


async def test_a_long_generation_is_streamed_and_assembled(server: FakeLLMServer) -> None:
    server.push(
        Reply(
            "x" * 100,
            tool_calls=[("execute_python", {"code": "print(1)"})],
            input_tokens=900,
            cache_read_tokens=600,
            output_tokens=70,
        ),
        Reply("short"),
    )
    long = _model(server, max_output_tokens=64_000)

    reply = await long.complete(HELLO)
    await _model(server).complete(HELLO)

    first, second = server.requests
    assert first.json["stream"] is True and first.json["max_tokens"] == 64_000
    assert "stream" not in second.json  # an ordinary request stays one JSON reply
    assert reply.text == "x" * 100 and reply.finish_reason == "tool_use"
    assert [(c.name, dict(c.arguments)) for c in reply.tool_calls] == [
        ("execute_python", {"code": "print(1)"})
    ]
    assert (reply.usage.input_tokens, reply.usage.cache_read_tokens) == (900, 600)
    assert reply.usage.output_tokens == 70


def test_thinking_is_streamed_counted_and_carried_back_with_tool_use(
    server: FakeLLMServer,
) -> None:
    server.push(
        Reply(
            tool_calls=[("execute_python", {"code": "x = 6"})],
            reasoning="I should set x.",
            reasoning_tokens=40,
        ),
        Reply("Done.", tool_calls=[("final_answer", {"variable": "x"})], reasoning="x is 6."),
    )
    model = _model(server, thinking_budget=2_048, max_output_tokens=1_000)

    result = rlm.run("What is x?", "", model=model, repl="inprocess", parsing=ToolCallingParser())

    assert result.answer == "6"
    first, second = (r.json for r in server.requests)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 2_048}
    assert first["stream"] is True and first["max_tokens"] == 3_048  # budget + reply cap
    assistant = second["messages"][1]
    assert assistant["role"] == "assistant"
    thinking, tool_use = assistant["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "I should set x."
    assert unseal(thinking["signature"]) == "I should set x."  # signature kept verbatim
    assert tool_use["type"] == "tool_use" and tool_use["input"] == {"code": "x = 6"}
    assert result.usage["claude-sonnet-4-6"].usage.reasoning_tokens == 40


async def test_thinking_through_extra_body_streams_too(server: FakeLLMServer) -> None:
    server.push(Reply("ok", reasoning="hm"))
    model = _model(server, extra_body={"thinking": {"type": "adaptive"}}, temperature=0.3)

    reply = await model.complete(HELLO)

    body = server.requests[0].json
    assert body["thinking"] == {"type": "adaptive"} and body["stream"] is True
    assert "temperature" not in body  # refused by Anthropic with thinking on
    assert reply.text == "ok" and reply.provider_items[0].data["type"] == "thinking"


def test_thinking_options_are_checked_up_front() -> None:
    with pytest.raises(ConfigurationError, match="at least 1024"):
        AnthropicModel("claude-sonnet-4-6", api_key="k", thinking_budget=100)
    with pytest.raises(ConfigurationError, match="temperature"):
        AnthropicModel("claude-sonnet-4-6", api_key="k", thinking_budget=2_048, temperature=0.2)


async def test_a_stream_broken_after_output_began_says_what_arrived(
    server: FakeLLMServer,
) -> None:
    text = "The answer begins here and goes on for a while."
    server.push(Reply(text, break_after_chars=20))
    model = _model(server, max_output_tokens=30_000)

    with pytest.raises(IncompleteReplyError) as caught:
        await model.complete(HELLO)

    error = caught.value
    assert error.partial_text == text[:20] and error.output_began
    assert "20 characters of text" in str(error) and "max_interrupted_retries" in str(error)
    assert len(server.requests) == 1  # generated and billed once: not asked for again


def test_the_policy_may_allow_an_interrupted_reply_to_be_asked_again(
    server: FakeLLMServer,
) -> None:
    server.push(Reply("FINAL(partial and lost)", break_after_chars=5), Reply("FINAL(7)"))
    policy = RetryPolicy(max_attempts=3, initial_wait_s=0, jitter_s=0, max_interrupted_retries=1)
    retries: list[ModelRetry] = []

    result = rlm.run(
        "q",
        "",
        model=_model(server, thinking_budget=1_024, retry=policy),
        repl="inprocess",
        on_event=lambda e: retries.append(e) if isinstance(e, ModelRetry) else None,
    )

    assert result.answer == "7" and len(server.requests) == 2
    assert [r.error_type for r in retries] == ["IncompleteReplyError"]


async def test_a_stream_broken_before_any_output_is_retried_like_a_connection_error(
    server: FakeLLMServer,
) -> None:
    server.push(Reply("lost", break_after_chars=0), Reply("kept"))
    model = _model(server, max_output_tokens=30_000)

    assert (await model.complete(HELLO)).text == "kept"
    assert len(server.requests) == 2


async def test_the_fake_servers_events_are_the_sdks_stream_events(
    server: FakeLLMServer,
) -> None:
    server.push(Reply("hi", reasoning="think", tool_calls=[("f", {"a": 1})], reasoning_tokens=2))
    client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="k")
    async with client:
        response = await client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        body = (await response.http_response.aread()).decode()

    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    adapter: TypeAdapter[anthropic.types.RawMessageStreamEvent] = TypeAdapter(
        anthropic.types.RawMessageStreamEvent
    )
    kinds = [adapter.validate_python(e).type for e in events if e["type"] != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 3


def test_a_rewritten_reply_keeps_its_thinking_in_front() -> None:
    thinking = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    items = (
        rlm.ProviderItem("anthropic.messages", thinking),
        rlm.ProviderItem("anthropic.messages", {"type": "text", "text": "long original"}),
    )
    rewritten = rlm.Message("assistant", "short", provider_items=items)

    _, messages = build_messages([rlm.Message("user", "q"), rewritten], caching=False)

    assert messages[1]["content"] == [thinking, {"type": "text", "text": "short"}]


def test_a_temperature_reaches_the_wire(server: FakeLLMServer) -> None:
    # anthropic 2.x's messages.create() takes no temperature argument: it travels in the
    # body, plain and streamed.
    server.push("FINAL(cool)", "FINAL(cooler)")
    model = _model(server, temperature=0.2)
    assert rlm.run("q", "c", model=model, repl="inprocess").answer == "cool"
    assert server.requests[-1].json["temperature"] == 0.2
    streamed = _model(server, temperature=0.4, max_output_tokens=64_000)
    assert rlm.run("q", "c", model=streamed, repl="inprocess").answer == "cooler"
    body = server.requests[-1].json
    assert body["temperature"] == 0.4 and body.get("stream") is True
