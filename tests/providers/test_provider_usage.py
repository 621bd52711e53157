"""Usage normalisation, prompt caching on the wire, prices and context windows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import rlm
from rlm.providers import AnthropicModel, OpenAIModel
from rlm.providers.anthropic import build_messages
from rlm.providers.catalog import context_window, set_context_window
from rlm.providers.pricing import Price, cost_usd, price_for, set_price
from rlm.testing.server import FakeLLMServer, RawReply, RecordedRequest, Reply

ModelFactory = Callable[..., Any]
HELLO = rlm.ModelRequest(messages=(rlm.Message("user", "hello"),))


async def test_openai_usage_keeps_prompt_tokens_and_reads_the_details(
    server: FakeLLMServer,
) -> None:
    server.push(
        Reply(
            "hi",
            raw_usage={
                "prompt_tokens": 1_200,
                "completion_tokens": 300,
                "total_tokens": 1_500,
                "prompt_tokens_details": {"cached_tokens": 1_024},
                "completion_tokens_details": {"reasoning_tokens": 256},
            },
        )
    )
    model = OpenAIModel("o4-mini", base_url=server.openai_base_url, api_key="k")

    usage = (await model.complete(HELLO)).usage

    assert usage == rlm.Usage(
        input_tokens=1_200,
        output_tokens=300,
        cache_read_tokens=1_024,
        reasoning_tokens=256,
        requests=1,
    )
    expected = (176 * 1.10 + 1_024 * 0.275 + 300 * 4.40) / 1e6
    assert cost_usd("o4-mini", usage) == pytest.approx(expected)


async def test_anthropic_input_tokens_gain_the_cache_reads_and_writes(
    server: FakeLLMServer,
) -> None:
    server.push(
        Reply(
            "hi",
            raw_usage={
                "input_tokens": 50,
                "output_tokens": 30,
                "cache_read_input_tokens": 1_000,
                "cache_creation_input_tokens": 200,
                "output_tokens_details": {"thinking_tokens": 12},
            },
        )
    )
    model = AnthropicModel("claude-sonnet-4-6", base_url=server.anthropic_base_url, api_key="k")

    usage = (await model.complete(HELLO)).usage

    assert usage == rlm.Usage(
        input_tokens=1_250,
        output_tokens=30,
        cache_read_tokens=1_000,
        cache_write_tokens=200,
        reasoning_tokens=12,
        requests=1,
    )
    expected = (50 * 3.0 + 1_000 * 0.30 + 200 * 3.75 + 30 * 15.0) / 1e6
    assert cost_usd("claude-sonnet-4-6", usage) == pytest.approx(expected)


async def test_the_same_normalised_usage_survives_either_wire_format(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(
        Reply(
            "x", input_tokens=5_000, output_tokens=40, cache_read_tokens=4_000, reasoning_tokens=8
        )
    )

    usage = (await make_model().complete(HELLO)).usage

    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (5_000, 40, 4_000)
    # reasoning_tokens / output_tokens_details.thinking_tokens
    assert usage.reasoning_tokens == 8


async def test_servers_without_usage_details_are_fine(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(Reply("x", input_tokens=70, output_tokens=7, usage_details=False))

    usage = (await make_model().complete(HELLO)).usage

    assert usage == rlm.Usage(input_tokens=70, output_tokens=7, requests=1)


async def test_a_reply_without_usage_counts_one_request(server: FakeLLMServer) -> None:
    server.push(
        RawReply(
            '{"choices": [{"index": 0, "finish_reason": "stop",'
            ' "message": {"role": "assistant", "content": "bare"}}]}'
        )
    )
    model = OpenAIModel("llama3", base_url=server.openai_base_url)

    response = await model.complete(HELLO)

    assert response.text == "bare"
    assert response.usage == rlm.Usage(requests=1)


def _cache_marks(request: RecordedRequest) -> list[str]:
    """Where the request carries cache_control: "system" or the message's role."""
    body = request.json
    marks = ["system" for b in body.get("system", []) if "cache_control" in b]
    for message in body["messages"]:
        marks += [message["role"] for b in message["content"] if "cache_control" in b]
    return marks


def test_anthropic_requests_mark_the_stable_prefix_for_caching(server: FakeLLMServer) -> None:
    server.push(
        Reply("```repl\nprint(1)\n```", input_tokens=3_000, cache_write_tokens=2_900),
        Reply("```repl\nprint(2)\n```", input_tokens=3_200, cache_read_tokens=2_900),
        Reply("FINAL(done)", input_tokens=3_400, cache_read_tokens=3_100),
    )
    model = AnthropicModel("claude-sonnet-4-6", base_url=server.anthropic_base_url, api_key="k")

    result = rlm.run("q", "ctx", model=model, repl="inprocess")

    assert result.answer == "done"
    for request in server.requests:
        marks = _cache_marks(request)
        # The system prompt, and the end of the conversation (which the next request
        # repeats as its prefix).
        assert marks[0] == "system" and len(marks) == 2
        last = request.json["messages"][-1]["content"][-1]
        assert last["cache_control"] == {"type": "ephemeral"}
    # The saving shows in the usage: most input was read from the cache.
    usage = result.usage["claude-sonnet-4-6"].usage
    assert usage.cache_read_tokens == 6_000
    assert usage.cache_write_tokens == 2_900
    uncached = cost_usd("claude-sonnet-4-6", rlm.Usage(input_tokens=9_600))
    assert result.cost_usd is not None and uncached is not None
    assert result.cost_usd < uncached


def test_prompt_caching_can_be_switched_off(server: FakeLLMServer) -> None:
    server.push("FINAL(done)")
    model = AnthropicModel(
        "claude-sonnet-4-6", base_url=server.anthropic_base_url, api_key="k", prompt_caching=False
    )

    rlm.run("q", "ctx", model=model, repl="inprocess")

    assert b"cache_control" not in server.requests[0].body


def test_at_most_four_breakpoints_keeping_the_system_one_and_the_latest() -> None:
    messages = [rlm.Message("system", "sys", cache_breakpoint=True)]
    for i in range(6):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append(rlm.Message(role, f"m{i}", cache_breakpoint=True))

    system, wire = build_messages(messages)

    assert "cache_control" in system[0]
    marked = [b["text"] for m in wire for b in m["content"] if "cache_control" in b]
    assert marked == ["m3", "m4", "m5"]


def test_tool_results_merge_into_one_user_turn() -> None:
    call_a = rlm.ToolCall("a", "execute_python", {"code": "1"})
    call_b = rlm.ToolCall("b", "execute_python", {"code": "2"})
    messages = [
        rlm.Message("user", "go"),
        rlm.Message("assistant", "", tool_calls=(call_a, call_b)),
        rlm.Message("tool", "out a", tool_call_id="a"),
        rlm.Message("tool", "", tool_call_id="b", cache_breakpoint=True),
        rlm.Message("user", "more output"),
    ]

    _, wire = build_messages(messages)

    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    assistant, results = wire[1]["content"], wire[2]["content"]
    assert [b["type"] for b in assistant] == ["tool_use", "tool_use"]  # no empty text block
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[1]["content"] and results[1]["cache_control"] == {"type": "ephemeral"}


def test_openai_messages_carry_tool_calls_and_results() -> None:
    model = OpenAIModel("gpt-4o", api_key="k", api="chat")
    call = rlm.ToolCall("call_1", "execute_python", {"code": "print(1)"})
    request = rlm.ModelRequest(
        messages=(
            rlm.Message("system", "sys", cache_breakpoint=True),
            rlm.Message("assistant", "", tool_calls=(call,)),
            rlm.Message("tool", "1", tool_call_id="call_1"),
        ),
        max_output_tokens=100,
        temperature=0.2,
    )

    params = model.request_body(request)

    assert params["messages"][1]["tool_calls"][0]["function"] == {
        "name": "execute_python",
        "arguments": json.dumps({"code": "print(1)"}),
    }
    assert params["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "1"}
    assert params["max_completion_tokens"] == 100 and params["temperature"] == 0.2
    # Compatible servers get the older field name, which they all understand.
    local = OpenAIModel("llama3", base_url="http://localhost:11434/v1")
    assert "max_tokens" in local.request_body(request)


async def test_invalid_tool_arguments_reach_the_parser_unparsed(server: FakeLLMServer) -> None:
    server.push(
        RawReply(
            json.dumps(
                {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "tool_calls",
                            "message": {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": "c1",
                                        "type": "function",
                                        "function": {
                                            "name": "execute_python",
                                            "arguments": "{not json",
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                }
            )
        )
    )
    model = OpenAIModel("gpt-4o", base_url=server.openai_base_url, api_key="k")

    response = await model.complete(HELLO)

    assert response.tool_calls == (
        rlm.ToolCall("c1", "execute_python", {"_invalid_json": "{not json"}),
    )


def test_prices_cover_current_models_and_dated_snapshots() -> None:
    for name in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o3",
        "o4-mini",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-3-5-haiku",
        "claude-3-7-sonnet",
    ]:
        assert price_for(name) is not None, name
        assert context_window(name) is not None, name
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-5")
    assert price_for("openai/gpt-4o") == price_for("gpt-4o")
    # A variant is not its base model: unknown, so no cost rather than a wrong one.
    assert price_for("gpt-4o-mini-search-preview") is None
    assert cost_usd("llama3.1:8b", rlm.Usage(input_tokens=10)) is None


def test_set_price_overrides_and_adds() -> None:
    set_price("house-model-v1", Price(input=1.0, output=2.0, cache_read=0.5))

    usage = rlm.Usage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=400_000)
    assert cost_usd("house-model-v1", usage) == pytest.approx(0.6 + 0.2 + 1.0)
    assert rlm.set_price is set_price and rlm.Price is Price


def test_adapters_know_their_context_window() -> None:
    assert OpenAIModel("gpt-4.1", api_key="k").context_window == 1_047_576
    assert AnthropicModel("claude-haiku-4-5-20251001", api_key="k").context_window == 200_000
    assert OpenAIModel("llama3", base_url="http://localhost:8000/v1").context_window is None
    given = OpenAIModel("llama3", base_url="http://localhost:8000/v1", context_window=8_192)
    assert given.context_window == 8_192
    set_context_window("house-model-v2", 32_000)
    assert OpenAIModel("house-model-v2", base_url="http://localhost:1/v1").context_window == 32_000


def test_owned_anthropic_clients_do_not_emit_their_own_spans() -> None:
    model = AnthropicModel("claude-haiku-4-5", api_key="k")
    # The SDK's resolved option: rlm's telemetry already has a span per model call.
    assert model.client._tracer is None
    assert model.client.max_retries == 0


def test_import_rlm_loads_no_sdk() -> None:
    code = (
        "import sys, rlm, rlm.providers\n"
        "loaded = [m for m in ('openai', 'anthropic') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "rlm.providers.OpenAIModel\n"
        "assert 'openai' in sys.modules and 'anthropic' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
