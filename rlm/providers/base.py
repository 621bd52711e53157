"""The `Model` protocol and the frozen values that cross it.

Everything a provider adapter needs to know about the engine is in this module, and
everything the engine needs to know about a provider is the `Model` protocol: one async
method, `complete(request) -> response`, plus a `name` used for usage, pricing and
telemetry. A model may also expose `provider` (for telemetry; defaults to "unknown") and
`context_window` (in tokens, for the sub-call size check), and `base_url`, `temperature`
and `max_output_tokens` (for telemetry); `describe_model` reads them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

Role = Literal["system", "user", "assistant", "tool"]
ModelPurpose = Literal["root", "subcall", "final", "compaction"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call requested by the model (native tool calling)."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: a name, a description and a JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProviderItem:
    """One part of a reply in its provider's own form, kept to be sent back as is.

    Reasoning models return parts only their provider can read: OpenAI Responses'
    reasoning items (with `encrypted_content`), Anthropic's thinking blocks (with their
    `signature`). The model keeps its reasoning between turns only if those parts come
    back with the next request, unchanged and in their place. An adapter puts the whole
    reply here (`ModelResponse.provider_items`), the engine keeps it on the assistant
    message it appends, and the adapter that speaks `api` sends it back; other adapters
    ignore it. `data` is the item's JSON exactly as received.
    """

    api: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message.

    `tool_calls` is set on assistant messages that called tools; `tool_call_id` on the
    `tool` message carrying a call's result. `cache_breakpoint` marks the end of a stable
    prefix that providers with explicit prompt caching (Anthropic) may cache.
    `provider_items` is the reply this assistant message came from, in its provider's
    form (see `ProviderItem`); an adapter sends it back instead of `content` and
    `tool_calls` while they still say the same, and otherwise keeps only the parts it
    cannot rebuild (reasoning).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    cache_breakpoint: bool = False
    provider_items: tuple[ProviderItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage, normalised across providers.

    `input_tokens` counts everything sent, cached tokens included; `cache_read_tokens`
    and `cache_write_tokens` are subsets of it. `reasoning_tokens` is a subset of
    `output_tokens`. `requests` counts model calls.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            requests=self.requests + other.requests,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What the engine asks of a model.

    `purpose` says why the call is made: "root" (an iteration of a run), "subcall"
    (`llm_query` from the model's code), "final" (the last request for an answer when
    a run is out of iterations) or "compaction" (a summary of the history when it nears
    the model's window). Adapters may ignore it.

    `metadata` is set by the engine for models that want to know who is asking (the
    provider adapters send none of it): `"rlm.run_id"`, `"rlm.depth"`,
    `"rlm.context_fingerprint"` (`rlm.fingerprint.context_fingerprint` of the run's
    context) and `"rlm.call_path"` (the call's place in the run tree), which
    `rlm.testing.ReplayModel` and `rlm.resume` use.
    """

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None
    temperature: float | None = None
    purpose: ModelPurpose = "root"
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """A model's reply: its text, any tool calls, usage, and the model that answered.

    `provider_items` is the reply in its provider's own form, for adapters that must
    send reasoning back on the next turn (see `ProviderItem`).
    """

    text: str
    usage: Usage = Usage()
    #: The provider's id of the reply (`chatcmpl-...`, `msg_...`), when it sent one.
    id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    provider_items: tuple[ProviderItem, ...] = ()


@runtime_checkable
class Model(Protocol):
    """What the engine calls. Implement `name` and `complete` to bring any model.

    ```python
    class MyModel:
        name = "my-model"

        async def complete(self, request: rlm.ModelRequest) -> rlm.ModelResponse:
            text = await my_client.chat([m.content for m in request.messages])
            return rlm.ModelResponse(text=text)
    ```
    """

    @property
    def name(self) -> str: ...

    async def complete(self, request: ModelRequest) -> ModelResponse: ...


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the engine knows about a model beyond the protocol."""

    name: str
    provider: str
    context_window: int | None
    server_address: str | None = None
    server_port: int | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None


def describe_model(model: Model) -> ModelInfo:
    """Read a model's optional `provider`, `context_window`, `base_url`, `temperature`
    and `max_output_tokens` attributes."""
    provider = getattr(model, "provider", None)
    window = getattr(model, "context_window", None)
    address, port = _server(getattr(model, "base_url", None))
    temperature = getattr(model, "temperature", None)
    max_tokens = getattr(model, "max_output_tokens", None)
    return ModelInfo(
        name=model.name,
        provider=provider if isinstance(provider, str) else "unknown",
        context_window=window if isinstance(window, int) and window > 0 else None,
        server_address=address,
        server_port=port,
        temperature=float(temperature)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool)
        else None,
        max_output_tokens=max_tokens if _is_count(max_tokens) else None,
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _server(base_url: object) -> tuple[str | None, int | None]:
    """Host and port of a model's API root (the scheme's port when none is written)."""
    if not isinstance(base_url, str) or not base_url:
        return None, None
    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry about to happen: handed to the retry listener (the event bus)."""

    model: str
    attempt: int
    wait_s: float
    error_type: str
    error: str


RetryListener = Callable[[RetryDetails], Awaitable[None] | None]

# Set by the engine around each `complete()` call so that a provider's retry loop can
# report retries to the run that made the call without knowing anything about runs.
retry_listener: contextvars.ContextVar[RetryListener | None] = contextvars.ContextVar(
    "rlm_retry_listener", default=None
)


async def report_retry(details: RetryDetails) -> None:
    """Tell the current run (if any) that a retry is about to happen."""
    listener = retry_listener.get()
    if listener is None:
        return
    outcome = listener(details)
    if outcome is not None:
        await outcome
