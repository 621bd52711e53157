"""`OpenAIModel`: OpenAI's Responses API, and Chat Completions for any server that speaks it.

```python
model = OpenAIModel("gpt-5-mini")                                     # Responses, OPENAI_API_KEY
local = OpenAIModel("llama3.1", base_url="http://localhost:11434/v1")  # Chat Completions, no key
```

OpenAI's own API is spoken through Responses by default (reasoning survives between
turns only there: see `rlm.providers.responses`); any other `base_url` through Chat
Completions, which vLLM, Ollama, llama.cpp and proxies speak. `api=` chooses.

The `openai` SDK is imported with this module, which rlm imports only when an OpenAI
model is first built (`import rlm` stays SDK-free).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, Literal

import httpx2
import openai
from openai._base_client import AsyncAPIClient  # the base of AsyncOpenAI's hooks
from openai._models import FinalRequestOptions  # what client.request() takes

from rlm.errors import ConfigurationError, MalformedResponseError
from rlm.providers import responses
from rlm.providers._common import (
    DEFAULT_TIMEOUT_S,
    PerLoop,
    adopt_client,
    env,
    is_official,
    parse_arguments,
    preview,
    resolve_key,
)
from rlm.providers.base import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from rlm.providers.catalog import context_window as known_context_window
from rlm.providers.catalog import is_reasoning_model
from rlm.providers.http import PreparedRequests, http_client
from rlm.providers.retry import (
    ProviderSpec,
    RetryPolicy,
    SDKErrors,
    call_with_retries,
    malformed_error,
)

OPENAI_ERRORS = SDKErrors(
    base=openai.OpenAIError,
    status=openai.APIStatusError,
    connection=openai.APIConnectionError,
    timeout=openai.APITimeoutError,
    validation=openai.APIResponseValidationError,
)


Api = Literal["responses", "chat"]


class _OwnedClient(PreparedRequests, openai.AsyncOpenAI):
    """The client rlm builds (a fixed key): requests built from a per-endpoint template.

    `AsyncOpenAI` adds four per-request hooks to its base client for a provider
    runtime, a workload identity or a key provider, each a pass-through without them
    (importing its module on every call): about 30 us of a call's CPU. rlm builds its
    clients with a fixed key and none of them, so each hook goes to the base client's
    directly; a client that has any of them (checked once) keeps `AsyncOpenAI`'s.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._plain = all(
            getattr(self, name, _MISSING) is None
            for name in ("_provider_runtime", "_workload_identity_auth", "_api_key_provider")
        )

    async def _prepare_options(self, options: FinalRequestOptions) -> FinalRequestOptions:
        if self._plain:
            return await AsyncAPIClient._prepare_options(self, options)
        return await super()._prepare_options(options)

    async def _prepare_request(self, request: httpx2.Request) -> None:
        if not self._plain:
            await super()._prepare_request(request)

    @property
    def custom_auth(self) -> httpx2.Auth | None:
        return None if self._plain else super().custom_auth

    async def _send_request(
        self, request: httpx2.Request, *, stream: bool, **kwargs: Any
    ) -> httpx2.Response:
        if self._plain:
            return await AsyncAPIClient._send_request(self, request, stream=stream, **kwargs)
        return await super()._send_request(request, stream=stream, **kwargs)


_MISSING = object()


class OpenAIModel:
    """A model served through OpenAI's Responses or Chat Completions API (non-streaming).

    Args:
        model: the model name as the server knows it ("gpt-4o-mini", "llama3.1:8b").
        api: "responses" (the default for OpenAI's own API: stateless requests that
            carry the model's encrypted reasoning from turn to turn) or "chat" (Chat
            Completions; the default for any other `base_url`).
        client: an `openai.AsyncOpenAI` to use instead of building one; it is used
            through `with_options(max_retries=0)` because rlm does the retrying.
        base_url: the API root, e.g. "http://localhost:8000/v1" (default:
            `OPENAI_BASE_URL`, else OpenAI's API).
        api_key: the key (default: `OPENAI_API_KEY`). Servers other than OpenAI's
            may need none; a placeholder is sent then.
        timeout: seconds per attempt (default 600 for clients built here; a `client`
            you pass keeps its own timeout unless you set this).
        temperature: sampling temperature; not sent unless set (reasoning models
            accept only the default).
        max_output_tokens: a cap on each reply's tokens; not sent unless set.
        retry: how failed calls are retried (default `RetryPolicy()`).
        context_window: the model's window in tokens (default: rlm's table, else None).
        reasoning_effort: how hard a reasoning model thinks ("minimal", "low",
            "medium", "high", ...); sent as `reasoning.effort` over Responses and as
            `reasoning_effort` over Chat Completions. Not sent unless set.
        extra_body: extra JSON fields merged into every request (server-specific
            options such as vLLM's sampling parameters); its fields win.

    Raises:
        MissingAPIKeyError: for OpenAI's API without a key, before any request.
    """

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        client: openai.AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        retry: RetryPolicy | None = None,
        context_window: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        api: Api | None = None,
        reasoning_effort: str | None = None,
    ) -> None:
        # What pickling sends instead of the client (see __reduce__): the arguments as
        # given, so a key or URL left to the environment is read by the receiving process.
        given = {k: v for k, v in locals().items() if k not in ("self", "client")}
        self._settings: dict[str, Any] | None = given if client is None else None
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("OpenAIModel needs a model name, e.g. 'gpt-4o-mini'")
        if api not in (None, "responses", "chat"):
            raise ConfigurationError(
                f"OpenAIModel(api={api!r}): use 'responses' (OpenAI's API) or 'chat' (Chat "
                "Completions, which compatible servers speak)"
            )
        if reasoning_effort is not None and not isinstance(reasoning_effort, str):
            raise ConfigurationError("reasoning_effort must be a string such as 'low' or 'high'")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be an rlm.providers.RetryPolicy")
        self.name = model
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.retry = retry or RetryPolicy()
        self.context_window = context_window or known_context_window(model)
        self.extra_body = dict(extra_body or {})
        self.reasoning_effort = reasoning_effort
        if client is not None:
            self.client, self._clients = adopt_client(
                client, openai.AsyncOpenAI, "openai.AsyncOpenAI", timeout
            )
        else:
            url = base_url or env("OPENAI_BASE_URL")
            key = resolve_key(
                label="OpenAI",
                model=model,
                api_key=api_key,
                base_url=url,
                key_env="OPENAI_API_KEY",
                base_url_env="OPENAI_BASE_URL",
                domain="openai.com",
            )

            seconds = timeout if timeout is not None else DEFAULT_TIMEOUT_S

            def build() -> openai.AsyncOpenAI:
                return _OwnedClient(
                    api_key=key,
                    base_url=url,
                    timeout=seconds,
                    max_retries=0,
                    http_client=http_client(openai.DefaultAioHttpClient, seconds),
                )

            self.client = build()
            self._clients = PerLoop(self.client, build)
        self.base_url = str(self.client.base_url)
        official = is_official(self.base_url, "openai.com")
        self.api: Api = api or ("responses" if official else "chat")
        # OpenAI's API wants max_completion_tokens; compatible servers know max_tokens.
        self._max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        # Only reasoning models accept the include; others refuse the request.
        self._encrypted_reasoning = reasoning_effort is not None or is_reasoning_model(model)
        self._reply_kind = "response object" if self.api == "responses" else "chat completion"
        client_timeout = self.client.timeout
        path = "/responses" if self.api == "responses" else "/chat/completions"
        self._post = FinalRequestOptions.construct(method="post", url=path)
        self._spec = ProviderSpec(
            label="OpenAI" if official else "OpenAI-compatible",
            model=model,
            base_url=self.base_url,
            key_env="OPENAI_API_KEY",
            base_url_env="OPENAI_BASE_URL",
            api_name="OpenAI Responses" if self.api == "responses" else "OpenAI Chat Completions",
            timeout_s=client_timeout if isinstance(client_timeout, int | float) else None,
            errors=OPENAI_ERRORS,
        )

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Pickle as the configuration: the other process builds its own client (a client
        holds sockets and belongs to one event loop)."""
        if self._settings is None:
            raise TypeError(
                "a OpenAIModel made with client= cannot be pickled (its client cannot travel to "
                "another process): make it with base_url= and api_key= instead"
            )
        return functools.partial(OpenAIModel, **self._settings), ()

    def __repr__(self) -> str:
        return f"OpenAIModel({self.name!r}, base_url={self.base_url!r}, api={self.api!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send `request` as one Responses call or chat completion, retrying transient
        failures."""
        options = self._post.model_copy(update={"json_data": self.request_body(request)})
        parse = self.parse_response

        async def attempt() -> ModelResponse:
            client = await self._clients.get()
            # The SDK's raw request (what its documented `client.post()` sends), with the
            # reply kept as JSON: `chat.completions.create` would spend half of a small
            # call's CPU re-validating our plain-JSON body and building pydantic models
            # we read three fields of. Status errors are still the SDK's. The options
            # are copied from ones built once per model (building them costs as much as
            # the rest of the request).
            reply = await client.request(httpx2.Response, options)
            return parse(self._decode(reply))

        return await call_with_retries(attempt, spec=self._spec, policy=self.retry)

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body of the request for `request` in this model's `api`
        (`extra_body` merged in, its fields winning)."""
        temperature = request.temperature if request.temperature is not None else self.temperature
        max_tokens = request.max_output_tokens or self.max_output_tokens
        if self.api == "responses":
            body = responses.request_body(
                self.name,
                request,
                temperature=temperature,
                max_output_tokens=max_tokens,
                reasoning_effort=self.reasoning_effort,
                encrypted_reasoning=self._encrypted_reasoning,
            )
            body.update(self.extra_body)
            return body
        body = {
            "model": self.name,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body[self._max_tokens_field] = max_tokens
        if self.reasoning_effort is not None:
            body["reasoning_effort"] = self.reasoning_effort
        body.update(self.extra_body)
        return body

    def _decode(self, reply: httpx2.Response) -> object:
        # JSON whatever its label (some servers and proxies call it text, which the SDK
        # reads too); the content type only decides how a body that is not JSON fails.
        try:
            return json.loads(reply.content)
        except ValueError:
            kind = reply.headers.get("content-type", "application/json")
            if "json" in kind.lower():
                raise  # invalid JSON: malformed, not retried
            raise self._malformed(
                f"expected a JSON {self._reply_kind}, got {preview(reply.text)}"
            ) from None

    def parse_response(self, raw: object) -> ModelResponse:
        """A `ModelResponse` from the reply's JSON body (a Responses object or a chat
        completion, as `api` says); `MalformedResponseError` if it is unusable."""
        if self.api == "responses":
            return responses.parse_response(raw, model=self.name, malformed=self._malformed)
        if not isinstance(raw, dict):
            raise self._malformed(f"expected a JSON chat completion, got {preview(raw)}")
        choices = raw.get("choices")
        if not choices or not isinstance(choices, list):
            raise self._malformed("the reply has no choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise self._malformed("the reply's first choice has no message")
        parsed = (_tool_call(c, i) for i, c in enumerate(message.get("tool_calls") or ()))
        calls = tuple(c for c in parsed if c is not None)
        text = message.get("content")
        if text is None:
            text = message.get("refusal")
        if not isinstance(text, str | None):
            raise self._malformed(f"the reply's content is not text: {preview(text)}")
        if text is None and not calls:
            raise self._malformed("the reply's message has no content and no tool calls")
        model = raw.get("model")
        finish = choice.get("finish_reason")
        reply_id = raw.get("id")
        return ModelResponse(
            text=text or "",
            usage=_usage(raw.get("usage")),
            id=reply_id if isinstance(reply_id, str) and reply_id else None,
            model=model if isinstance(model, str) and model else self.name,
            finish_reason=finish if isinstance(finish, str) else None,
            tool_calls=calls,
        )

    def _malformed(self, detail: str) -> MalformedResponseError:
        return malformed_error(self._spec, detail)


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content,
        }
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }


def _tool_call(call: object, index: int) -> ToolCall | None:
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    if not isinstance(function, dict) or not function.get("name"):
        return None
    return ToolCall(
        id=str(call.get("id") or f"call_{index}"),
        name=str(function["name"]),
        arguments=parse_arguments(function.get("arguments")),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _field(value: object, name: str) -> object:
    return value.get(name) if isinstance(value, dict) else None


def _usage(usage: object) -> Usage:
    """OpenAI's `prompt_tokens` already include cached tokens: no adjustment needed."""
    if not isinstance(usage, dict):
        return Usage(requests=1)
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        cache_read_tokens=_count(_field(usage.get("prompt_tokens_details"), "cached_tokens")),
        reasoning_tokens=_count(_field(usage.get("completion_tokens_details"), "reasoning_tokens")),
        requests=1,
    )
