"""`OpenAIModel` over the OpenAI Responses API, through the real `openai` SDK.

The reasoning a model did in one turn must come back with the next one (stateless,
`store: false`, encrypted), in its place in the conversation.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.responses import Response

import rlm
from rlm.errors import ConfigurationError
from rlm.providers.openai import OpenAIModel
from rlm.providers.responses import API, input_items
from rlm.strategies.parsing import ToolCallingParser
from rlm.testing.server import FakeLLMServer, Reply
from rlm.testing.wire import unseal
from tests.providers.conftest import FAST_RETRY


def _model(server: FakeLLMServer, name: str = "gpt-5-mini", **options: object) -> OpenAIModel:
    return OpenAIModel(
        name,
        base_url=server.openai_base_url,
        api="responses",
        retry=FAST_RETRY,
        **options,  # type: ignore[arg-type]
    )


def test_openais_own_api_speaks_responses_and_other_servers_chat() -> None:
    assert OpenAIModel("gpt-5", api_key="sk-test").api == "responses"
    assert OpenAIModel("llama3", base_url="http://localhost:11434/v1").api == "chat"
    assert OpenAIModel("gpt-5", api_key="sk-test", api="chat").api == "chat"
    with pytest.raises(ConfigurationError, match="'responses'"):
        OpenAIModel("gpt-5", api_key="sk-test", api="completions")  # type: ignore[arg-type]


async def test_the_fake_servers_responses_parse_as_the_sdks_own_types(
    server: FakeLLMServer,
) -> None:
    server.push(Reply("Hello.", reasoning="think", reasoning_tokens=3, cache_read_tokens=2))
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
    async with client:
        raw = await client.responses.with_raw_response.create(
            model="gpt-5-mini", input="Hi", include=["reasoning.encrypted_content"]
        )
        response = raw.parse()

    assert response.output_text == "Hello."
    # The SDK builds its models without validating; validate the body strictly here.
    strict = Response.model_validate(json.loads(raw.http_response.content))
    reasoning = strict.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content is not None
    assert strict.usage is not None and strict.usage.output_tokens_details.reasoning_tokens == 3


def test_reasoning_comes_back_on_the_next_turn_in_its_place(server: FakeLLMServer) -> None:
    server.push(
        Reply("```repl\nprint(sum(context))\n```", reasoning="add them", reasoning_tokens=50),
        Reply("FINAL(6)", reasoning="it printed 6", cache_read_tokens=100, input_tokens=400),
    )

    result = rlm.run("Add them", [1, 2, 3], model=_model(server), repl="inprocess")

    assert result.answer == "6"
    first, second = (r.json for r in server.requests)
    for body in (first, second):
        assert body["store"] is False
        assert body["include"] == ["reasoning.encrypted_content"]
    sent = second["input"]
    kinds = [item.get("type", item.get("role")) for item in sent]
    assert kinds == ["system", "user", "reasoning", "message", "user"]
    reasoning, message = sent[2], sent[3]
    assert unseal(reasoning["encrypted_content"]) == "add them"
    assert reasoning["id"].startswith("rs_") and message["id"].startswith("msg_")
    assert message["content"][0]["text"].startswith("```repl")
    usage = result.usage["gpt-5-mini"].usage
    assert usage.reasoning_tokens == 50 and usage.cache_read_tokens == 100
    assert result.cost_usd is not None and result.cost_usd > 0


def test_reasoning_stays_ahead_of_its_tool_calls(server: FakeLLMServer) -> None:
    server.push(
        Reply(tool_calls=[("execute_python", {"code": "x = 6"})], reasoning="set x"),
        Reply(tool_calls=[("final_answer", {"variable": "x"})]),
    )

    result = rlm.run(
        "What is x?", "", model=_model(server), repl="inprocess", parsing=ToolCallingParser()
    )

    assert result.answer == "6"
    sent = server.requests[1].json["input"]
    kinds = [item.get("type", item.get("role")) for item in sent]
    assert kinds[2:] == ["reasoning", "function_call", "function_call_output"]
    assert sent[3]["call_id"] == sent[4]["call_id"]


def test_a_rewritten_reply_keeps_only_its_reasoning() -> None:
    reply = _model_reply(text="original")
    rewritten = rlm.Message("assistant", "shortened", provider_items=reply.provider_items)
    kept = rlm.Message("assistant", "original", provider_items=reply.provider_items)

    assert [i.get("type", i.get("role")) for i in input_items([kept])] == ["reasoning", "message"]
    assert input_items([rewritten]) == [
        reply.provider_items[0].data,
        {"role": "assistant", "content": "shortened"},
    ]
    # Items of another API are not this adapter's to send.
    foreign = rlm.Message("assistant", "hi", provider_items=(rlm.ProviderItem("other", {}),))
    assert input_items([foreign]) == [{"role": "assistant", "content": "hi"}]


def _model_reply(text: str) -> rlm.ModelResponse:
    model = OpenAIModel("gpt-5", api_key="sk-test")
    return model.parse_response(
        {
            "model": "gpt-5",
            "status": "completed",
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "e"},
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                },
            ],
        }
    )


async def test_options_reach_the_wire_and_an_incomplete_reply_reads_as_length(
    server: FakeLLMServer,
) -> None:
    server.push(Reply("partial", finish_reason="length"), Reply("ok"))
    effortful = _model(server, reasoning_effort="low", max_output_tokens=50)
    plain = _model(server, "gpt-4o", temperature=0.5)

    cut = await effortful.complete(rlm.ModelRequest((rlm.Message("user", "hi"),)))
    await plain.complete(rlm.ModelRequest((rlm.Message("user", "hi"),)))

    assert (cut.text, cut.finish_reason) == ("partial", "length")
    assert cut.provider_items[0].api == API
    first, second = (r.json for r in server.requests)
    assert first["reasoning"] == {"effort": "low"} and first["max_output_tokens"] == 50
    # gpt-4o is no reasoning model: OpenAI refuses the encrypted-reasoning include there.
    assert "include" not in second and "reasoning" not in second
    assert second["temperature"] == 0.5 and second["store"] is False
    assert server.requests[0].path == "/v1/responses" and server.requests[0].api == "responses"
