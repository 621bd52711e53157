"""The fake LLM server itself: wire shapes, scripting, failure injection, concurrency."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
import openai
import pytest

from rlm.testing.server import (
    ErrorReply,
    FakeLLMServer,
    RawReply,
    RecordedRequest,
    Reply,
)


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_openai_replies_have_the_sdk_shape() -> None:
    reply = Reply(
        "hello", input_tokens=100, output_tokens=5, cache_read_tokens=64, reasoning_tokens=2
    )
    with (
        FakeLLMServer([reply]) as server,
        openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )

    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 100
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 64
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 2


def test_anthropic_replies_have_the_sdk_shape() -> None:
    reply = Reply(
        "calling", tool_calls=[("lookup", {"q": "x"})], input_tokens=100, cache_read_tokens=60
    )
    with (
        FakeLLMServer([reply]) as server,
        anthropic.Anthropic(
            base_url=server.anthropic_base_url, api_key="k", max_retries=0
        ) as client,
    ):
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )

    assert message.id.startswith("msg_")
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "calling"
    assert tool.type == "tool_use" and tool.name == "lookup" and tool.input == {"q": "x"}
    assert tool.id.startswith("toolu_")
    # Anthropic's input_tokens leave the cache reads out.
    assert message.usage.input_tokens == 40
    assert message.usage.cache_read_input_tokens == 60


def test_steps_can_be_functions_of_the_request_and_requests_are_recorded() -> None:
    def echo(request: RecordedRequest) -> str:
        return f"you said {request.json['messages'][-1]['content']}"

    with FakeLLMServer([echo], handler=lambda r: ErrorReply(418, "teapot")) as server:
        first = post(f"{server.openai_base_url}/chat/completions", {"messages": [{"content": "a"}]})
        second = post(f"{server.url}/v1/messages", {"messages": []})

    assert first[0] == 200 and first[1]["choices"][0]["message"]["content"] == "you said a"
    assert second == (418, {"type": "error", "error": {"type": "api_error", "message": "teapot"}})
    assert [(r.api, r.path) for r in server.requests] == [
        ("openai", "/v1/chat/completions"),
        ("anthropic", "/v1/messages"),
    ]


def test_a_request_beyond_the_script_is_refused_loudly() -> None:
    with FakeLLMServer(["only one"]) as server:
        post(f"{server.openai_base_url}/chat/completions", {})
        status, body = post(f"{server.openai_base_url}/chat/completions", {})
        missing = post(f"{server.url}/v2/elsewhere", {})

    assert status == 400
    assert "no reply scripted for request 2" in body["error"]["message"]
    assert missing[0] == 404
    server.assert_exhausted()


def test_unused_steps_are_reported() -> None:
    with FakeLLMServer(["a", "b"]) as server:
        post(f"{server.openai_base_url}/chat/completions", {})

    with pytest.raises(AssertionError, match="1 unused step"):
        server.assert_exhausted()


def test_errors_carry_headers_and_raw_bodies_pass_through() -> None:
    with FakeLLMServer(
        [ErrorReply(429, headers={"retry-after": "7"}), RawReply("oops", status=502)]
    ) as server:
        url = f"{server.openai_base_url}/chat/completions"
        with pytest.raises(urllib.error.HTTPError) as limited:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)
        with pytest.raises(urllib.error.HTTPError) as broken:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)

    with limited.value, broken.value:
        assert (limited.value.code, limited.value.headers["retry-after"]) == (429, "7")
        assert (broken.value.code, broken.value.read()) == (502, b"oops")


async def test_requests_are_served_concurrently() -> None:
    """Every request waits until all have arrived: a serial server would never finish."""
    count = 96
    arrived = 0
    everyone: asyncio.Event | None = None

    async def barrier(request: RecordedRequest) -> str:
        nonlocal arrived, everyone
        everyone = everyone or asyncio.Event()
        arrived += 1
        if arrived == count:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), timeout=10)
        return "together"

    async with FakeLLMServer(handler=barrier) as server:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
                for _ in range(count)
            )
        )
        await client.close()

    assert {r.choices[0].message.content for r in replies} == {"together"}
    assert server.max_in_flight == count


def test_a_broken_step_is_refused_and_kept() -> None:
    def broken(request: RecordedRequest) -> str:
        raise ValueError("bug in the test")

    with FakeLLMServer([broken]) as server:
        status, body = post(f"{server.openai_base_url}/chat/completions", {})

    assert status == 400
    assert "ValueError: bug in the test" in body["error"]["message"]
    assert [type(e) for e in server.errors] == [ValueError]
