"""The OpenAI Responses API on the wire: request bodies and replies (`api="responses"`).

Requests are stateless (`store: false`): the whole conversation goes with each turn, as
over Chat Completions. A reasoning model's reasoning items come back (with
`encrypted_content`, asked for through `include`) in the reply's `output`; the adapter
keeps that output as `ProviderItem`s and sends it back verbatim in the assistant's place
on the next turn, so the model continues from its own reasoning rather than starting
over. If the message's text or tool calls no longer match the stored output (something
rewrote the history), the text and calls are rebuilt from the message and only the
reasoning items are kept, in front of them.

Plain functions over JSON: `OpenAIModel` owns the client, retries and errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rlm.errors import MalformedResponseError
from rlm.providers._common import parse_arguments, preview
from rlm.providers.base import (
    Message,
    ModelRequest,
    ModelResponse,
    ProviderItem,
    ToolCall,
    ToolSpec,
    Usage,
)

#: `ProviderItem.api` of items from this API.
API = "openai.responses"

#: Asks for reasoning that can be sent back without server-side storage.
ENCRYPTED_REASONING = "reasoning.encrypted_content"

Malformed = Callable[[str], MalformedResponseError]


def request_body(
    model: str,
    request: ModelRequest,
    *,
    temperature: float | None,
    max_output_tokens: int | None,
    reasoning_effort: str | None,
    encrypted_reasoning: bool,
) -> dict[str, Any]:
    """The JSON body of `POST /responses` for `request`."""
    body: dict[str, Any] = {
        "model": model,
        "input": input_items(request.messages),
        "store": False,
    }
    if encrypted_reasoning:
        body["include"] = [ENCRYPTED_REASONING]
    if reasoning_effort is not None:
        body["reasoning"] = {"effort": reasoning_effort}
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    if temperature is not None:
        body["temperature"] = temperature
    if max_output_tokens is not None:
        body["max_output_tokens"] = max_output_tokens
    return body


def input_items(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """rlm messages as Responses input items."""
    items: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id or "",
                    "output": message.content,
                }
            )
        elif message.role == "assistant":
            items += _assistant_items(message)
        else:
            items.append({"role": message.role, "content": message.content})
    return items


def _assistant_items(message: Message) -> list[dict[str, Any]]:
    stored = [dict(item.data) for item in message.provider_items if item.api == API]
    replayable = any(item.get("type") != "reasoning" for item in stored)
    if replayable and _says(stored) == (message.content, [c.id for c in message.tool_calls]):
        return stored
    items = [item for item in stored if item.get("type") == "reasoning"]
    if message.content or not message.tool_calls:
        items.append({"role": "assistant", "content": message.content})
    items += [
        {
            "type": "function_call",
            "call_id": call.id,
            "name": call.name,
            "arguments": json.dumps(dict(call.arguments)),
        }
        for call in message.tool_calls
    ]
    return items


def _says(output: Iterable[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The text and tool-call ids an output carries (what the message was built from)."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[str] = []
    for item in output:
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
        elif kind == "function_call":
            calls.append(str(item.get("call_id") or f"call_{len(calls)}"))
    return "".join(texts) or "".join(refusals), calls


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.parameters),
        # Responses makes function tools strict by default, which demands every
        # property be required; rlm's tools have optional arguments.
        "strict": False,
    }


def parse_response(raw: object, *, model: str, malformed: Malformed) -> ModelResponse:
    """A `ModelResponse` from a Responses reply's JSON; `malformed(detail)` if unusable."""
    if not isinstance(raw, dict):
        raise malformed(f"expected a JSON response object, got {preview(raw)}")
    output = raw.get("output")
    if not isinstance(output, list):
        raise malformed("the reply has no output list")
    error = raw.get("error")
    if raw.get("status") == "failed" and isinstance(error, dict):
        raise malformed(f"the response failed: {error.get('code')}: {error.get('message')}")
    items = [item for item in output if isinstance(item, dict)]
    text, _ = _says(items)
    calls = tuple(
        ToolCall(
            id=str(item.get("call_id") or f"call_{index}"),
            name=str(item["name"]),
            arguments=parse_arguments(item.get("arguments")),
        )
        for index, item in enumerate(i for i in items if i.get("type") == "function_call")
        if item.get("name")
    )
    incomplete = raw.get("status") == "incomplete"
    if not text and not calls and not incomplete:
        raise malformed("the reply's output has no message and no tool calls")
    name = raw.get("model")
    reply_id = raw.get("id")
    return ModelResponse(
        text=text,
        usage=_usage(raw.get("usage")),
        id=reply_id if isinstance(reply_id, str) and reply_id else None,
        model=name if isinstance(name, str) and name else model,
        finish_reason=_finish_reason(raw, bool(calls)),
        tool_calls=calls,
        provider_items=tuple(ProviderItem(API, item) for item in items),
    )


def _finish_reason(raw: Mapping[str, Any], called: bool) -> str:
    """Chat Completions' words, so telemetry reads the same for both APIs."""
    if called:
        return "tool_calls"
    details = raw.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if raw.get("status") == "incomplete":
        return "length" if reason in (None, "max_output_tokens") else str(reason)
    return "stop"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _field(value: object, name: str) -> object:
    return value.get(name) if isinstance(value, dict) else None


def _usage(usage: object) -> Usage:
    """Responses' `input_tokens` include cached tokens, as Chat Completions' do."""
    if not isinstance(usage, dict):
        return Usage(requests=1)
    details = usage.get("input_tokens_details")
    return Usage(
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=_count(usage.get("output_tokens")),
        cache_read_tokens=_count(_field(details, "cached_tokens")),
        cache_write_tokens=_count(_field(details, "cache_write_tokens")),
        reasoning_tokens=_count(_field(usage.get("output_tokens_details"), "reasoning_tokens")),
        requests=1,
    )
