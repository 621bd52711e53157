"""`AnthropicModel`: Claude through the Anthropic Messages API.

```python
model = AnthropicModel("claude-sonnet-4-5")                    # ANTHROPIC_API_KEY
model = AnthropicModel("claude-haiku-4-5", prompt_caching=False)
```

Prompt caching is on by default: messages the engine marks with `cache_breakpoint` (the
system prompt, and the end of each request, which the next request repeats as its
prefix) get `cache_control: {"type": "ephemeral"}`, so each iteration reads the history
from the cache instead of paying for it again. `Usage.cache_read_tokens` and
`cache_write_tokens` show the effect; costs use the cache prices.

Long generations (a `max_tokens` above the SDK's non-streaming limit) and thinking
(`thinking_budget=`, or `extra_body={"thinking": ...}`) are streamed and assembled into
the same reply (`rlm.providers.anthropic_stream`). Thinking blocks, signatures included,
are kept on the reply (`ModelResponse.provider_items`) and sent back in their place with
the next turn, as the API requires when thinking models use tools.

The `anthropic` SDK is imported with this module, which rlm imports only when an
Anthropic model is first built (`import rlm` stays SDK-free).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
from anthropic.types import Message as AnthropicMessage

from rlm.errors import (
    ConfigurationError,
    IncompleteReplyError,
    MalformedResponseError,
    MissingAPIKeyError,
)
from rlm.providers._common import (
    DEFAULT_TIMEOUT_S,
    PerLoop,
    adopt_client,
    env,
    missing_key_error,
    parse_arguments,
    preview,
    resolve_key,
)
from rlm.providers.anthropic_stream import needs_streaming, stream_message, thinking_on
from rlm.providers.base import (
    Message,
    ModelRequest,
    ModelResponse,
    ProviderItem,
    ToolCall,
    ToolSpec,
    Usage,
)
from rlm.providers.catalog import context_window as known_context_window
from rlm.providers.http import PreparedRequests, http_client
from rlm.providers.retry import (
    ProviderSpec,
    RetryPolicy,
    SDKErrors,
    call_with_retries,
    interrupted_error,
    malformed_error,
)

ANTHROPIC_ERRORS = SDKErrors(
    base=anthropic.AnthropicError,
    status=anthropic.APIStatusError,
    connection=anthropic.APIConnectionError,
    timeout=anthropic.APITimeoutError,
    validation=anthropic.APIResponseValidationError,
)

#: The Messages API requires `max_tokens`; this is used when nothing else sets it.
DEFAULT_MAX_OUTPUT_TOKENS = 8192
#: Anthropic accepts at most this many `cache_control` breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4
#: The smallest thinking budget Anthropic accepts.
MIN_THINKING_BUDGET = 1024
#: `ProviderItem.api` of content blocks from this API.
API = "anthropic.messages"
#: Blocks only Anthropic can read, which must go back unchanged.
_THINKING_BLOCKS = ("thinking", "redacted_thinking")
#: Older models whose replies are capped below the default.
_SMALL_OUTPUT_MODELS = ("claude-3-haiku", "claude-3-opus", "claude-3-sonnet")
_EMPTY_TEXT = "(empty)"


def _supports_open_telemetry() -> bool:
    try:
        parameters = inspect.signature(anthropic.AsyncAnthropic.__init__).parameters
    except (TypeError, ValueError):
        return False
    return "open_telemetry" in parameters


class _OwnedClient(PreparedRequests, anthropic.AsyncAnthropic):
    """A client rlm builds with a key: requests built from a per-endpoint template."""


class AnthropicModel:
    """A Claude model through the Anthropic Messages API.

    Args:
        model: the model name, e.g. "claude-sonnet-4-5".
        client: an `anthropic.AsyncAnthropic` to use instead of building one; it is
            used through `with_options(max_retries=0)` because rlm does the retrying.
        base_url: the API root (default: `ANTHROPIC_BASE_URL`, else Anthropic's API).
        api_key: the key (default: `ANTHROPIC_API_KEY`; the SDK's other credentials,
            such as `ANTHROPIC_AUTH_TOKEN` or a profile, work too). A server other than
            Anthropic's may need none; a placeholder is sent then.
        timeout: seconds per attempt (default 600 for clients built here; a `client`
            you pass keeps its own timeout unless you set this).
        temperature: sampling temperature; not sent unless set.
        max_output_tokens: the cap on each reply (Anthropic requires one; default
            8192, or 4096 for Claude 3 Haiku/Opus).
        retry: how failed calls are retried (default `RetryPolicy()`).
        context_window: the model's window in tokens (default: rlm's table, else None).
        prompt_caching: mark the engine's cache breakpoints with `cache_control`
            (default True).
        thinking_budget: turn extended thinking on with this many tokens to think
            (at least 1024). The reply's cap (`max_output_tokens`) is then added on
            top when it is not larger than the budget; thinking tokens are counted in
            `Usage.reasoning_tokens`. Requests with thinking are streamed.
        extra_body: extra JSON fields merged into every request, e.g.
            `{"thinking": {"type": "adaptive"}}` (thinking on, streamed, as above).

    Raises:
        MissingAPIKeyError: for Anthropic's API without credentials, before any request.
    """

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        retry: RetryPolicy | None = None,
        context_window: int | None = None,
        prompt_caching: bool = True,
        thinking_budget: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        # What pickling sends instead of the client (see __reduce__): the arguments as
        # given, so a key or URL left to the environment is read by the receiving process.
        given = {k: v for k, v in locals().items() if k not in ("self", "client")}
        self._settings: dict[str, Any] | None = given if client is None else None
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("AnthropicModel needs a model name, e.g. 'claude-sonnet-4-5'")
        _check_thinking(thinking_budget, temperature, extra_body)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be an rlm.providers.RetryPolicy")
        self.name = model
        self.temperature = temperature
        small = model.startswith(_SMALL_OUTPUT_MODELS)
        self.max_output_tokens = max_output_tokens or (4096 if small else DEFAULT_MAX_OUTPUT_TOKENS)
        self.retry = retry or RetryPolicy()
        self.context_window = context_window or known_context_window(model)
        self.prompt_caching = prompt_caching
        self.thinking_budget = thinking_budget
        self.extra_body = dict(extra_body or {})
        if client is not None:
            self.client, self._clients = adopt_client(
                client, anthropic.AsyncAnthropic, "anthropic.AsyncAnthropic", timeout
            )
        else:
            url = base_url or env("ANTHROPIC_BASE_URL")
            key = resolve_key(
                label="Anthropic",
                model=model,
                api_key=api_key,
                base_url=url,
                key_env="ANTHROPIC_API_KEY",
                base_url_env="ANTHROPIC_BASE_URL",
                domain="anthropic.com",
                required=False,
            )
            kwargs: dict[str, Any] = {
                "api_key": key,
                "base_url": url,
                "timeout": timeout if timeout is not None else DEFAULT_TIMEOUT_S,
                "max_retries": 0,
            }
            if _supports_open_telemetry():
                # rlm's own telemetry already has a span per model call.
                kwargs["open_telemetry"] = False

            # With a key, headers are fixed; the SDK's other credentials may refresh.
            cls = _OwnedClient if key is not None else anthropic.AsyncAnthropic

            def build() -> anthropic.AsyncAnthropic:
                return cls(
                    **kwargs,
                    http_client=http_client(anthropic.DefaultAioHttpClient, kwargs["timeout"]),
                )

            try:
                self.client = build()
                self._clients = PerLoop(self.client, build)
            except anthropic.CredentialsError as exc:
                raise MissingAPIKeyError(
                    f"Anthropic credentials for model {model!r} could not be loaded: {exc} "
                    "Set ANTHROPIC_API_KEY (or pass api_key=...), or fix the profile."
                ) from exc
            if key is None and not _has_credentials(self.client):
                raise missing_key_error(
                    "Anthropic", model, "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"
                )
        self.base_url = str(self.client.base_url)
        client_timeout = self.client.timeout
        self._spec = ProviderSpec(
            label="Anthropic",
            model=model,
            base_url=self.base_url,
            key_env="ANTHROPIC_API_KEY",
            base_url_env="ANTHROPIC_BASE_URL",
            api_name="Anthropic Messages",
            timeout_s=client_timeout if isinstance(client_timeout, int | float) else None,
            errors=ANTHROPIC_ERRORS,
        )

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Pickle as the configuration: the other process builds its own client (a client
        holds sockets and belongs to one event loop)."""
        if self._settings is None:
            raise TypeError(
                "a AnthropicModel made with client= cannot be pickled (its client cannot travel to "
                "another process): make it with base_url= and api_key= instead"
            )
        return functools.partial(AnthropicModel, **self._settings), ()

    def __repr__(self) -> str:
        return f"AnthropicModel({self.name!r}, base_url={self.base_url!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send `request` as one Messages call (streamed when it may be long), retrying
        transient failures."""
        params = self.request_params(request)
        streamed = self.streams(params)

        def interrupted(
            received: str, cause: BaseException | None, text: str, began: bool
        ) -> IncompleteReplyError:
            return interrupted_error(
                self._spec,
                self.retry,
                received=received,
                cause=cause,
                partial_text=text,
                output_began=began,
            )

        async def attempt() -> ModelResponse:
            client = await self._clients.get()
            if streamed:
                return self.parse_response(await stream_message(client, params, interrupted))
            return self.parse_response(await client.messages.create(**params))

        return await call_with_retries(attempt, spec=self._spec, policy=self.retry)

    def streams(self, params: Mapping[str, Any]) -> bool:
        """Whether a request with these parameters is streamed: thinking is on, or its
        `max_tokens` is above what the SDK allows without streaming."""
        return thinking_on(dict(params)) or needs_streaming(self.name, int(params["max_tokens"]))

    def request_params(self, request: ModelRequest) -> dict[str, Any]:
        """The keyword arguments of `messages.create` / `messages.stream` for `request`."""
        system, messages = build_messages(request.messages, caching=self.prompt_caching)
        max_tokens = request.max_output_tokens or self.max_output_tokens
        params: dict[str, Any] = {"model": self.name, "messages": messages}
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [_tool(t) for t in request.tools]
        thinking = self.extra_body.get("thinking")
        if self.thinking_budget is not None:
            thinking = {"type": "enabled", "budget_tokens": self.thinking_budget}
            params["thinking"] = thinking
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if isinstance(budget, int) and max_tokens <= budget:
            # max_tokens counts thinking too and must exceed the budget: the cap then
            # applies to what comes after the thinking.
            max_tokens += budget
        params["max_tokens"] = max_tokens
        if self.extra_body:
            params["extra_body"] = dict(self.extra_body)
        temperature = request.temperature if request.temperature is not None else self.temperature
        # Anthropic accepts no temperature with thinking on. The SDK's `messages.create`
        # (2.x) no longer takes `temperature` as an argument, while the API still reads it
        # from the body: send it there.
        if temperature is not None and not thinking_on(params):
            params["extra_body"] = {**params.get("extra_body", {}), "temperature": temperature}
        return params

    def parse_response(self, raw: object) -> ModelResponse:
        """A `ModelResponse` from the SDK's reply; `MalformedResponseError` if unusable."""
        if not isinstance(raw, AnthropicMessage):
            raise self._malformed(f"expected a JSON message, got {preview(raw)}")
        content = getattr(raw, "content", None)
        if content is None:
            raise self._malformed("the reply has no content")
        texts: list[str] = []
        calls: list[ToolCall] = []
        opaque = False
        for block in content:
            kind = getattr(block, "type", None)
            opaque = opaque or kind in _THINKING_BLOCKS
            if kind == "text":
                texts.append(getattr(block, "text", "") or "")
            elif kind == "tool_use":
                calls.append(
                    ToolCall(
                        id=getattr(block, "id", None) or f"toolu_{len(calls)}",
                        name=getattr(block, "name", "") or "",
                        arguments=parse_arguments(getattr(block, "input", None)),
                    )
                )
        # The blocks are kept only when thinking is among them: the rest is rebuilt
        # from the message as well as it is replayed.
        items = tuple(ProviderItem(API, b.to_dict()) for b in content) if opaque else ()
        return ModelResponse(
            text="".join(texts),
            usage=_usage(getattr(raw, "usage", None)),
            id=getattr(raw, "id", None) or None,
            model=getattr(raw, "model", None) or self.name,
            finish_reason=getattr(raw, "stop_reason", None),
            tool_calls=tuple(calls),
            provider_items=items,
        )

    def _malformed(self, detail: str) -> MalformedResponseError:
        return malformed_error(self._spec, detail)


def _check_thinking(
    budget: int | None, temperature: float | None, extra_body: Mapping[str, Any] | None
) -> None:
    if budget is None:
        return
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise ConfigurationError(
            f"AnthropicModel(thinking_budget={budget!r}): Anthropic needs at least "
            f"{MIN_THINKING_BUDGET} tokens to think; pass an int >= {MIN_THINKING_BUDGET}."
        )
    if temperature is not None:
        raise ConfigurationError(
            "AnthropicModel: Anthropic accepts no temperature with thinking on; drop "
            "temperature= or thinking_budget=."
        )
    if extra_body and "thinking" in extra_body:
        raise ConfigurationError(
            "AnthropicModel: thinking is set twice (thinking_budget= and "
            "extra_body['thinking']); keep one."
        )


def _has_credentials(client: anthropic.AsyncAnthropic) -> bool:
    """Whether the SDK found any credential (key, token, profile, federation)."""
    return any(
        getattr(client, attr, None) is not None for attr in ("api_key", "auth_token", "credentials")
    )


@dataclass
class _Turn:
    role: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


def build_messages(
    messages: Sequence[Message], *, caching: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """rlm messages as Anthropic's `system` blocks and `messages`.

    System messages become `system` text blocks. Consecutive messages of one role are
    merged (tool results travel in a user turn). With `caching`, the last block of each
    message marked `cache_breakpoint` gets `cache_control`, at most four in all: the
    last system breakpoint and the latest message breakpoints.
    """
    system: list[dict[str, Any]] = []
    system_marks: list[dict[str, Any]] = []
    turns: list[_Turn] = []
    marks: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append({"type": "text", "text": message.content})
                if message.cache_breakpoint:
                    system_marks.append(system[-1])
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if turns and turns[-1].role == role:
            turns[-1].blocks.extend(blocks)
        else:
            turns.append(_Turn(role, blocks))
        if message.cache_breakpoint and blocks:
            marks.append(blocks[-1])
    if caching:
        chosen = system_marks[-1:]
        room = MAX_CACHE_BREAKPOINTS - len(chosen)
        chosen += marks[-room:] if room > 0 and marks else []
        for block in chosen:
            block["cache_control"] = {"type": "ephemeral"}
    return system, [{"role": t.role, "content": t.blocks} for t in turns]


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "assistant" and message.provider_items:
        return _assistant_blocks(message)
    return _rebuilt(message)


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    """A reply's own blocks while they still say what the message says; otherwise the
    message rebuilt, behind its thinking blocks (which must lead the turn)."""
    stored = [dict(i.data) for i in message.provider_items if i.api == API]
    # Anthropic rejects empty text blocks, which a stream can leave behind.
    stored = [b for b in stored if not (b.get("type") == "text" and not b.get("text"))]
    if _says(stored) == (message.content, [c.id for c in message.tool_calls]) and any(
        b.get("type") not in _THINKING_BLOCKS for b in stored
    ):
        return stored
    return [b for b in stored if b.get("type") in _THINKING_BLOCKS] + _rebuilt(message)


def _says(blocks: Iterable[Mapping[str, Any]]) -> tuple[str, list[str]]:
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    return text, [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]


def _rebuilt(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content or _EMPTY_TEXT,
            }
        ]
    blocks: list[dict[str, Any]] = []
    # Anthropic rejects empty text blocks, and messages without content.
    if message.content or not message.tool_calls:
        blocks.append({"type": "text", "text": message.content or _EMPTY_TEXT})
    if message.role == "assistant":
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)}
            for c in message.tool_calls
        ]
    return blocks


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": dict(tool.parameters),
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> Usage:
    """Anthropic's `input_tokens` exclude cache reads and writes: add them back."""
    if usage is None:
        return Usage(requests=1)
    read = _count(getattr(usage, "cache_read_input_tokens", 0))
    write = _count(getattr(usage, "cache_creation_input_tokens", 0))
    details = getattr(usage, "output_tokens_details", None)
    return Usage(
        input_tokens=_count(getattr(usage, "input_tokens", 0)) + read + write,
        output_tokens=_count(getattr(usage, "output_tokens", 0)),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=_count(getattr(details, "thinking_tokens", 0)),
        requests=1,
    )
