"""Fixtures for the provider tests: a fake server, and each adapter pointed at it.

Every test here drives the real `openai`/`anthropic` SDK clients over HTTP to a
`FakeLLMServer` on 127.0.0.1; nothing reaches the internet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlm.providers.anthropic import AnthropicModel
from rlm.providers.openai import OpenAIModel
from rlm.providers.retry import RetryPolicy
from rlm.testing.server import FakeLLMServer

#: Retries without waiting, so retry tests stay fast.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_wait_s=0.001, max_wait_s=0.001, jitter_s=0.0)

PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ADMIN_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_IDENTITY_TOKEN",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_CONFIG_DIR",
)

DEFAULT_NAMES = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-6"}

ModelFactory = Callable[..., OpenAIModel | AnthropicModel]


@pytest.fixture(autouse=True)
def clean_provider_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No test sees the developer's keys, base URLs or Anthropic profiles."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    # The Anthropic SDK looks for profiles under ~/.config/anthropic: use an empty home.
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def fast_retry() -> RetryPolicy:
    return FAST_RETRY


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(params=["openai", "responses", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_model(provider: str, server: FakeLLMServer) -> ModelFactory:
    """Build the parametrised provider's adapter against the fake server ("openai" is
    Chat Completions, "responses" the OpenAI Responses API)."""

    def make(name: str | None = None, **options: Any) -> OpenAIModel | AnthropicModel:
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("api_key", "test-key")
        if provider in ("openai", "responses"):
            options.setdefault("base_url", server.openai_base_url)
            options.setdefault("api", "chat" if provider == "openai" else "responses")
            return OpenAIModel(name or DEFAULT_NAMES["openai"], **options)
        options.setdefault("base_url", server.anthropic_base_url)
        return AnthropicModel(name or DEFAULT_NAMES["anthropic"], **options)

    return make
