"""rlm's own models pickle as their configuration, so batches can send them to Ray workers:
the copy builds its own client (or lock) and works."""

from __future__ import annotations

import asyncio
import pickle

import openai
import pytest
from ray import cloudpickle

from rlm.providers.anthropic import AnthropicModel
from rlm.providers.base import Message, ModelRequest
from rlm.providers.openai import OpenAIModel
from rlm.providers.retry import RetryPolicy
from rlm.testing import FunctionModel, ScriptedModel
from rlm.testing.server import FakeLLMServer

REQUEST = ModelRequest(messages=(Message("user", "hello"),), purpose="root")


def ask(model: object) -> str:
    return asyncio.run(model.complete(REQUEST)).text  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_sdk_models_round_trip_with_their_settings_and_a_new_client(
    server: FakeLLMServer, kind: str
) -> None:
    retry = RetryPolicy(max_attempts=2)
    model: OpenAIModel | AnthropicModel
    if kind == "openai":
        model = OpenAIModel(
            "gpt-4o-mini",
            base_url=server.openai_base_url,
            temperature=0.3,
            max_output_tokens=77,
            retry=retry,
            extra_body={"seed": 7},
        )
    else:
        model = AnthropicModel(
            "claude-sonnet-4-6",
            base_url=server.anthropic_base_url,
            api_key="sk-ant-test",
            max_output_tokens=77,
            retry=retry,
            prompt_caching=False,
        )
    copy = pickle.loads(pickle.dumps(model))
    assert type(copy) is type(model) and copy is not model
    assert copy.client is not model.client
    assert (copy.name, copy.temperature, copy.max_output_tokens, copy.retry) == (
        model.name,
        model.temperature,
        77,
        retry,
    )
    server.push("from the copy")
    assert ask(copy) == "from the copy"
    body = server.requests[-1].json
    assert body["model"] == model.name and body["max_tokens"] == 77
    if kind == "openai":
        assert body["temperature"] == 0.3 and body["seed"] == 7


def test_a_key_from_the_environment_is_not_pickled(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-driver-secret")
    data = pickle.dumps(OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url))
    assert b"sk-driver-secret" not in data
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker")  # the receiving side's own key
    copy = pickle.loads(data)
    server.push("ok")
    assert ask(copy) == "ok"
    assert server.requests[-1].headers["authorization"] == "Bearer sk-worker"


def test_a_model_around_a_callers_client_refuses_to_pickle(server: FakeLLMServer) -> None:
    client = openai.AsyncOpenAI(api_key="k", base_url=server.openai_base_url)
    with pytest.raises(TypeError, match="base_url= and api_key="):
        pickle.dumps(OpenAIModel("gpt-4o-mini", client=client))


def test_test_models_round_trip_with_a_fresh_lock() -> None:
    function = FunctionModel(lambda request: request.messages[-1].content.upper(), name="up")
    ask(function)
    copy = cloudpickle.loads(cloudpickle.dumps(function))
    assert copy.calls == [] and copy.name == "up"
    assert ask(copy) == "HELLO"
    assert len(copy.calls) == 1 and len(function.calls) == 1

    scripted = ScriptedModel(["one", "two", "three"])
    ask(scripted)
    rest = cloudpickle.loads(cloudpickle.dumps(scripted))
    assert [ask(rest), ask(rest)] == ["two", "three"]  # the copy goes on from where it was
    rest.assert_exhausted()
    assert len(scripted.remaining) == 2  # the original is untouched
