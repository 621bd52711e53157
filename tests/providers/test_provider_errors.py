"""Retries and error mapping, counted at the server: exactly one layer retries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

import rlm
from rlm.errors import (
    AuthenticationError,
    BadRequestError,
    ContextTooLongError,
    MalformedResponseError,
    MissingAPIKeyError,
    ProviderUnavailableError,
    RateLimitError,
)
from rlm.events import Event, RunStarted
from rlm.providers import AnthropicModel, OpenAIModel, RetryPolicy
from rlm.providers.base import RetryDetails, retry_listener
from rlm.testing.server import Disconnect, ErrorReply, FakeLLMServer, RawReply, Reply

ModelFactory = Callable[..., Any]
HELLO = rlm.ModelRequest(messages=(rlm.Message("user", "hello"),))


async def call(model: Any) -> rlm.ModelResponse:
    response: rlm.ModelResponse = await model.complete(HELLO)
    return response


async def test_a_rate_limit_is_retried_after_the_wait_the_server_asked_for(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(ErrorReply(429, headers={"retry-after": "0.02"}), "recovered")
    seen: list[RetryDetails] = []
    token = retry_listener.set(seen.append)
    try:
        response = await call(make_model())
    finally:
        retry_listener.reset(token)

    assert response.text == "recovered"
    assert len(server.requests) == 2
    assert [(d.attempt, d.wait_s, d.error_type) for d in seen] == [(1, 0.02, "RateLimitError")]


@pytest.mark.parametrize("status", [500, 502, 503, 529, 408, 409])
async def test_server_errors_are_retried_then_reported(
    make_model: ModelFactory, server: FakeLLMServer, status: int
) -> None:
    server.push(*[ErrorReply(status, "upstream trouble")] * 3)

    with pytest.raises(ProviderUnavailableError) as caught:
        await call(make_model())

    assert len(server.requests) == 3  # FAST_RETRY allows 3 attempts; the SDK adds none
    assert caught.value.status == status
    message = str(caught.value)
    assert "after 3 attempts" in message and "upstream trouble" in message
    assert "RetryPolicy(max_attempts" in message


async def test_an_overloaded_provider_that_recovers_costs_one_retry(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(ErrorReply(529, "Overloaded"), "fine")

    response = await call(make_model())

    assert response.text == "fine"
    assert len(server.requests) == 2


async def test_an_exhausted_rate_limit_says_what_to_do(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(*[ErrorReply(429, "Rate limit reached", headers={"retry-after-ms": "1"})] * 2)
    model = make_model(retry=RetryPolicy(max_attempts=2, initial_wait_s=0, jitter_s=0))

    with pytest.raises(RateLimitError, match="max_concurrency") as caught:
        await call(model)

    assert len(server.requests) == 2
    assert caught.value.status == 429


@pytest.mark.parametrize(
    ("status", "error", "hint"),
    [
        (400, BadRequestError, "parameters"),
        (401, AuthenticationError, "_API_KEY"),
        (403, AuthenticationError, "access"),
        (404, BadRequestError, "model name"),
        (422, BadRequestError, "parameters"),
    ],
)
async def test_client_errors_are_never_retried(
    make_model: ModelFactory,
    server: FakeLLMServer,
    status: int,
    error: type[Exception],
    hint: str,
) -> None:
    # Even a server that says "retry me" does not get a second request for these.
    server.push(ErrorReply(status, "nope", headers={"x-should-retry": "true"}), "unused")

    with pytest.raises(error, match=hint):
        await call(make_model())

    assert len(server.requests) == 1


async def test_a_bad_key_names_the_variable_to_set(
    provider: str, make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(ErrorReply(401, "invalid x-api-key"))

    with pytest.raises(AuthenticationError) as caught:
        await call(make_model())

    expected = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    assert expected in str(caught.value)
    assert "invalid x-api-key" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "This model's maximum context length is 128000 tokens.", "context_length_exceeded"),
        (400, "prompt is too long: 210000 tokens > 200000 maximum", None),
        (413, "Request exceeds the maximum allowed number of bytes.", None),
    ],
)
async def test_an_oversized_request_is_context_too_long(
    make_model: ModelFactory, server: FakeLLMServer, status: int, message: str, code: str | None
) -> None:
    server.push(ErrorReply(status, message, code=code))

    with pytest.raises(ContextTooLongError, match="larger context window"):
        await call(make_model())

    assert len(server.requests) == 1


async def test_an_exhausted_quota_is_not_retried(server: FakeLLMServer) -> None:
    server.push(ErrorReply(429, "You exceeded your current quota", code="insufficient_quota"))
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url, api_key="k")

    with pytest.raises(RateLimitError, match="billing"):
        await call(model)

    assert len(server.requests) == 1


async def test_a_retry_after_longer_than_the_cap_fails_at_once(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(ErrorReply(429, headers={"retry-after": "3600"}), "unused")

    with pytest.raises(RateLimitError, match="3600 s"):
        await call(make_model())

    assert len(server.requests) == 1


async def test_a_slow_server_times_out_and_each_attempt_is_counted(
    make_model: ModelFactory, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.push(Reply("late", delay_s=30), Reply("late", delay_s=30))
    model = make_model(timeout=0.2, retry=dataclasses.replace(fast_retry, max_attempts=2))

    with pytest.raises(ProviderUnavailableError, match=r"timeout of 0\.2 s"):
        await call(model)

    assert len(server.requests) == 2


async def test_a_dropped_connection_is_retried(
    make_model: ModelFactory, server: FakeLLMServer
) -> None:
    server.push(Disconnect(), "after the drop")

    response = await call(make_model())

    assert response.text == "after the drop"
    assert len(server.requests) == 2


async def test_an_unreachable_server_says_so(provider: str, fast_retry: RetryPolicy) -> None:
    with FakeLLMServer() as gone:
        url = gone.openai_base_url if provider == "openai" else gone.anthropic_base_url
    cls = OpenAIModel if provider == "openai" else AnthropicModel
    model = cls("some-model", base_url=url, retry=dataclasses.replace(fast_retry, max_attempts=2))

    with pytest.raises(ProviderUnavailableError, match=r"could not reach .* Is the server running"):
        await call(model)


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        ("<html><body>Bad gateway</body></html>", "text/html", "expected a JSON"),
        ("", "application/json", "not valid JSON"),
        ("{not json", "application/json", "not valid JSON"),
    ],
)
async def test_unreadable_replies_get_a_clear_error(
    make_model: ModelFactory, server: FakeLLMServer, body: str, content_type: str, detail: str
) -> None:
    server.push(RawReply(body, content_type=content_type), "unused")

    with pytest.raises(MalformedResponseError, match=detail) as caught:
        await call(make_model())

    assert "speaks the" in str(caught.value)
    assert len(server.requests) == 1  # not retried


async def test_json_labelled_as_text_is_still_read(server: FakeLLMServer) -> None:
    body = '{"choices": [{"message": {"role": "assistant", "content": "hi"}}]}'
    server.push(RawReply(body, content_type="text/plain"))
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)

    assert (await call(model)).text == "hi"


async def test_a_completion_without_choices_is_malformed(server: FakeLLMServer) -> None:
    server.push(RawReply('{"id": "x", "object": "chat.completion", "choices": []}'))
    model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)

    with pytest.raises(MalformedResponseError, match="no choices"):
        await call(model)


async def test_a_message_without_content_is_malformed(server: FakeLLMServer) -> None:
    server.push(
        RawReply('{"choices": [{"index": 0, "message": {"role": "assistant"}}]}'),
        RawReply('{"id": "msg_1", "type": "message", "role": "assistant"}'),
    )
    openai_model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    anthropic_model = AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)

    with pytest.raises(MalformedResponseError, match="no content"):
        await call(openai_model)
    with pytest.raises(MalformedResponseError, match="no content"):
        await call(anthropic_model)


@pytest.mark.parametrize(
    ("spec", "variable"),
    [("openai/gpt-4o-mini", "OPENAI_API_KEY"), ("claude-haiku-4-5", "ANTHROPIC_API_KEY")],
)
def test_a_missing_key_fails_before_any_request(
    server: FakeLLMServer, spec: str, variable: str
) -> None:
    events: list[Event] = []

    with pytest.raises(MissingAPIKeyError, match=f"set the {variable}"):
        rlm.run("q", "ctx", model=spec, repl="inprocess", on_event=events.append)

    assert not [e for e in events if isinstance(e, RunStarted)]
    assert server.requests == []


def test_a_missing_key_is_a_configuration_error_naming_the_base_url_option() -> None:
    with pytest.raises(rlm.ConfigurationError, match="base_url"):
        OpenAIModel("gpt-4o")
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-opus-4-5")


def test_a_broken_anthropic_profile_is_a_missing_key_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_PROFILE", "does-not-exist")

    with pytest.raises(MissingAPIKeyError, match="does-not-exist"):
        AnthropicModel("claude-haiku-4-5")


async def test_a_local_server_needs_no_key(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    server.push("from the local model", "from claude-compatible")

    assert (await call(OpenAIModel("llama3.1:8b"))).text == "from the local model"
    anthropic_like = AnthropicModel("local-claude", base_url=server.anthropic_base_url)
    assert (await call(anthropic_like)).text == "from claude-compatible"
    assert server.requests[0].headers["authorization"] == "Bearer rlm-no-key"


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        RetryPolicy(max_wait_s=-1)
    assert RetryPolicy.never().max_attempts == 1


def closed_port_url(provider: str) -> str:
    with FakeLLMServer() as gone:
        return gone.openai_base_url if provider != "anthropic" else gone.anthropic_base_url


@pytest.mark.parametrize("own_client", [False, True], ids=["rlm-client", "users-httpx-client"])
async def test_a_refused_local_connection_fails_at_once_naming_the_url(
    provider: str, own_client: bool
) -> None:
    # The default policy allows five attempts; a wrong port on 127.0.0.1 gets one.
    url = closed_port_url(provider)
    cls = OpenAIModel if provider != "anthropic" else AnthropicModel
    options: dict[str, Any] = {"base_url": url, "api_key": "test-key"}
    if own_client:  # the SDK's default httpx2 transport, not the aiohttp one rlm builds
        import anthropic
        import openai

        sdk = openai.AsyncOpenAI if cls is OpenAIModel else anthropic.AsyncAnthropic
        options = {"client": sdk(base_url=url, api_key="test-key")}
    seen: list[RetryDetails] = []
    token = retry_listener.set(seen.append)
    try:
        with pytest.raises(ProviderUnavailableError) as caught:
            await call(cls("some-model", **options))
    finally:
        retry_listener.reset(token)

    assert seen == []
    message = str(caught.value)
    assert f"the connection to {url}" in message and "was refused" in message
    assert "attempts" not in message and "timeout" not in message


@pytest.mark.parametrize(
    ("url", "final"),
    [
        ("http://127.0.0.1:8000/v1/chat/completions", True),
        ("http://localhost:8000/v1/chat/completions", True),
        ("http://[::1]:8000/v1/chat/completions", True),
        ("http://10.1.2.3:8000/v1/chat/completions", True),
        ("http://192.168.0.7/v1/chat/completions", True),
        ("http://8.8.8.8/v1/chat/completions", False),  # a public address may come back
        ("https://api.example.com/v1/chat/completions", False),  # a name may be anywhere
    ],
)
def test_only_a_refusal_from_a_local_or_private_address_is_final(url: str, final: bool) -> None:
    import httpx2
    import openai

    from rlm.providers.retry import refused_local_url

    request = httpx2.Request("POST", url)
    refused = ConnectionRefusedError(111, "Connect call failed")
    transport = httpx2.ConnectError("All connection attempts failed", request=request)
    transport.__cause__ = refused
    error = openai.APIConnectionError(request=request)
    error.__cause__ = transport
    assert refused_local_url(error, "http://unused/v1") == (url if final else None)
    # Not refused (reset, unreachable, DNS): transient, whatever the address.
    transport.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert refused_local_url(error, "http://unused/v1") is None
