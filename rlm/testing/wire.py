"""How `FakeLLMServer` renders a `Reply` on each wire format.

One function per format: OpenAI Chat Completions, OpenAI Responses, Anthropic Messages,
and Anthropic's server-sent events for `stream: true` requests (`message_start` ...
`message_stop`, the order the `anthropic` SDK's stream accumulator expects). The shapes
follow the SDKs' own types (`openai.types.chat`, `openai.types.responses`,
`anthropic.types`), which the tests validate them against.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rlm.providers.base import ToolCall

if TYPE_CHECKING:
    from rlm.testing.server import RecordedRequest, Reply

#: Text deltas of a streamed reply carry this many characters each.
STREAM_CHUNK_CHARS = 16


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def dump(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def seal(reasoning: str) -> str:
    """The fake's "encrypted" reasoning: opaque to clients, readable by tests."""
    return base64.b64encode(f"sealed:{reasoning}".encode()).decode()


def unseal(sealed: str) -> str:
    """The reasoning text `seal` wrapped (for tests that check it came back)."""
    return base64.b64decode(sealed).decode().removeprefix("sealed:")


def calls(reply: Reply, prefix: str = "call_") -> list[ToolCall]:
    found: list[ToolCall] = []
    for call in reply.tool_calls:
        if isinstance(call, ToolCall):
            found.append(call)
        else:
            name, arguments = call
            found.append(ToolCall(id=new_id(prefix), name=name, arguments=arguments))
    return found


def counts(reply: Reply, request: RecordedRequest) -> tuple[int, int]:
    input_tokens = reply.input_tokens
    if input_tokens is None:
        # The body's size stands in for the prompt's: cheap, and grows as the prompt does.
        input_tokens = max(1, len(request.body) // 4)
        input_tokens += reply.cache_read_tokens + reply.cache_write_tokens
    output_tokens = reply.output_tokens
    if output_tokens is None:
        output_tokens = estimate_tokens(
            reply.text
            + (reply.reasoning or "")
            + "".join(json.dumps(dict(c.arguments)) for c in calls(reply))
        )
    return input_tokens, output_tokens


def _model(reply: Reply, request: RecordedRequest, model: str | None) -> str:
    return reply.model or model or request.model or "fake-model"


def render_openai(reply: Reply, request: RecordedRequest, model: str | None) -> dict[str, Any]:
    """A chat completion (`openai.types.chat.ChatCompletion`)."""
    found = calls(reply)
    input_tokens, output_tokens = counts(reply, request)
    usage: dict[str, Any] = {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if reply.usage_details:
        usage["prompt_tokens_details"] = {
            "cached_tokens": reply.cache_read_tokens,
            "audio_tokens": 0,
        }
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text or not found else None,
        "refusal": None,
    }
    if found:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments))},
            }
            for c in found
        ]
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(reply, request, model),
        "system_fingerprint": "fp_fakellm",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason or ("tool_calls" if found else "stop"),
            }
        ],
        "usage": dict(reply.raw_usage) if reply.raw_usage is not None else usage,
    }


def render_responses(reply: Reply, request: RecordedRequest, model: str | None) -> dict[str, Any]:
    """A Responses object (`openai.types.responses.Response`).

    `Reply.reasoning` becomes a reasoning item, with `encrypted_content` only when the
    request asked for it through `include`, as OpenAI's API does. A `finish_reason` of
    "length" makes the response incomplete (`max_output_tokens`).
    """
    body = request.json if isinstance(request.json, dict) else {}
    found = calls(reply, "call_")
    input_tokens, output_tokens = counts(reply, request)
    output: list[dict[str, Any]] = []
    if reply.reasoning is not None:
        item: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or ()):
            item["encrypted_content"] = seal(reply.reasoning)
        output.append(item)
    if reply.text or not found:
        output.append(
            {
                "id": new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
                ],
            }
        )
    output += [
        {
            "id": new_id("fc_"),
            "type": "function_call",
            "call_id": c.id,
            "name": c.name,
            "arguments": json.dumps(dict(c.arguments)),
            "status": "completed",
        }
        for c in found
    ]
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": reply.cache_read_tokens,
            "cache_write_tokens": reply.cache_write_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }
    incomplete = reply.finish_reason == "length"
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": time.time(),
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": None,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": _model(reply, request, model),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": list(body.get("tools") or ()),
        "top_p": 1.0,
        "truncation": "disabled",
        "metadata": {},
        "usage": dict(reply.raw_usage) if reply.raw_usage is not None else usage,
    }


def _anthropic_usage(reply: Reply, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        # Anthropic counts cache reads and writes apart from input_tokens.
        "input_tokens": max(0, input_tokens - reply.cache_read_tokens - reply.cache_write_tokens),
        "output_tokens": output_tokens,
    }
    if reply.usage_details:
        usage["cache_read_input_tokens"] = reply.cache_read_tokens
        usage["cache_creation_input_tokens"] = reply.cache_write_tokens
        if reply.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
    return usage


def render_anthropic(reply: Reply, request: RecordedRequest, model: str | None) -> dict[str, Any]:
    """A message (`anthropic.types.Message`); `Reply.reasoning` becomes a thinking block
    with a signature, ahead of the text and tool calls."""
    found = calls(reply, "toolu_")
    input_tokens, output_tokens = counts(reply, request)
    content: list[dict[str, Any]] = []
    if reply.reasoning is not None:
        content.append(
            {"type": "thinking", "thinking": reply.reasoning, "signature": seal(reply.reasoning)}
        )
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)} for c in found
    ]
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": _model(reply, request, model),
        "content": content,
        "stop_reason": reply.finish_reason or ("tool_use" if found else "end_turn"),
        "stop_sequence": None,
        "usage": (
            dict(reply.raw_usage)
            if reply.raw_usage is not None
            else _anthropic_usage(reply, input_tokens, output_tokens)
        ),
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def anthropic_events(
    reply: Reply, request: RecordedRequest, model: str | None
) -> tuple[list[bytes], bool]:
    """The SSE events of a streamed message, and whether they run to `message_stop`.

    With `Reply.break_after_chars`, the events stop (the connection is to drop) once that
    many characters of the reply's text have been sent.
    """
    message = render_anthropic(reply, request, model)
    usage = message["usage"]
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens_details"}
    start = {**message, "content": [], "stop_reason": None, "usage": {**start_usage}}
    start["usage"]["output_tokens"] = 1
    events = [_event("message_start", {"message": start}), _event("ping", {})]
    limit = reply.break_after_chars
    sent = 0
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty: dict[str, Any] = {"type": "text", "text": ""}
        if kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "tool_use":
            empty = {**block, "input": {}}
        events.append(_event("content_block_start", {"index": index, "content_block": empty}))
        for delta in _deltas(block):
            if limit is not None and delta.get("type") == "text_delta":
                room = limit - sent
                if room <= 0:
                    return events, False
                delta = {**delta, "text": delta["text"][:room]}
                sent += len(delta["text"])
            events.append(_event("content_block_delta", {"index": index, "delta": delta}))
        if limit is not None and kind == "text" and sent >= limit:
            return events, False
        events.append(_event("content_block_stop", {"index": index}))
    final_usage = {k: v for k, v in usage.items() if k != "input_tokens"}
    events.append(
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": final_usage,
            },
        )
    )
    events.append(_event("message_stop", {}))
    return events, True


def _deltas(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        text = block["text"]
        for at in range(0, len(text), STREAM_CHUNK_CHARS):
            yield {"type": "text_delta", "text": text[at : at + STREAM_CHUNK_CHARS]}
    elif kind == "thinking":
        yield {"type": "thinking_delta", "thinking": block["thinking"]}
        yield {"type": "signature_delta", "signature": block["signature"]}
    elif kind == "tool_use":
        yield {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
