"""Long and thinking generations over Anthropic's Messages API: when to stream, and how.

The `anthropic` SDK refuses a non-streaming request that may run past ten minutes, but
only while the client's timeout is the SDK's default; rlm sets its own timeout, which
switches that guard off, so rlm applies the same rule itself (`needs_streaming`) and
streams such requests, and every request with thinking on. The stream is read with the
SDK's `messages.stream`, whose accumulator assembles the same `Message` a non-streaming
call returns, so the reply is parsed one way.

A stream that breaks is not a plain connection error: once output has arrived it was
generated and billed. `stream_message` raises `IncompleteReplyError` saying what had
arrived (text, thinking, tool calls), with the partial text; the retry layer retries it
only as `RetryPolicy.max_interrupted_retries` allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
from anthropic.types import Message as AnthropicMessage

from rlm.errors import IncompleteReplyError

try:  # the SDK's table of models with a lower non-streaming limit (private, so guarded)
    from anthropic._constants import MODEL_NONSTREAMING_TOKENS
except ImportError:  # pragma: no cover - an SDK that moved it
    MODEL_NONSTREAMING_TOKENS = {}

#: The SDK's rule: a request may take (1 hour x max_tokens / 128,000); above 10 minutes
#: it must stream (max_tokens above 21,333, or the model's own lower limit).
_EXPECTED_S_PER_TOKEN = 60 * 60 / 128_000
_NONSTREAMING_LIMIT_S = 60 * 10

Interrupted = Callable[[str, BaseException | None, str, bool], IncompleteReplyError]


def needs_streaming(model: str, max_tokens: int) -> bool:
    """Whether the SDK would refuse `max_tokens` without streaming (its own rule)."""
    limit = MODEL_NONSTREAMING_TOKENS.get(model)
    too_slow = _EXPECTED_S_PER_TOKEN * max_tokens > _NONSTREAMING_LIMIT_S
    return too_slow or (limit is not None and max_tokens > limit)


def thinking_on(params: dict[str, Any]) -> bool:
    """Whether a request asks for extended thinking (directly or through `extra_body`)."""
    thinking = params.get("thinking") or (params.get("extra_body") or {}).get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")


async def stream_message(
    client: anthropic.AsyncAnthropic, params: dict[str, Any], interrupted: Interrupted
) -> AnthropicMessage:
    """Send `params` as a streamed request and return the assembled message.

    `interrupted(received, cause, partial_text, output_began)` builds the error raised
    when the stream breaks before `message_stop`. Failures before the stream opens
    (HTTP status, connection) propagate as the SDK raises them.
    """
    async with client.messages.stream(**params) as stream:
        started = finished = False
        cause: BaseException | None = None
        try:
            async for event in stream:
                if event.type == "message_start":
                    started = True
                elif event.type == "message_stop":
                    finished = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            cause = exc
        snapshot = stream.current_message_snapshot if started else None
        if finished and snapshot is not None:
            return snapshot
    received, text, began = _received(snapshot)
    raise interrupted(received, cause, text, began) from cause


def _received(snapshot: AnthropicMessage | None) -> tuple[str, str, bool]:
    """What a broken stream had delivered: a description, the text, and whether any
    output (generated, billed tokens) had arrived."""
    if snapshot is None:
        return "no output (before the message started)", "", False
    texts: list[str] = []
    thinking = 0
    tools: list[str] = []
    for block in snapshot.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "thinking":
            thinking += len(block.thinking)
        elif block.type == "redacted_thinking":
            thinking += 1
        elif block.type == "tool_use":
            tools.append(block.name)
    text = "".join(texts)
    parts = [f"{len(text):,} characters of text"]
    if thinking:
        parts.append(f"{thinking:,} characters of thinking")
    if tools:
        parts.append(f"tool calls to {', '.join(tools)} (the last one possibly incomplete)")
    began = bool(text or thinking or tools)
    return (", ".join(parts) if began else "no output"), text, began
