"""One scripted "brain" behind four models: `FunctionModel`, and the real OpenAI (Chat
Completions and Responses) and Anthropic SDK adapters talking to `FakeLLMServer` on
127.0.0.1.

A brain is a function of `Seen` (the text of a request, and of its last message) that
returns the reply text, so one scenario runs unchanged through every path.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from rlm.providers.base import Model, ModelRequest, describe_model
from rlm.testing import FunctionModel
from rlm.testing.server import FakeLLMServer, RecordedRequest

MODEL_KINDS = [
    pytest.param("scripted", id="scripted"),
    pytest.param("openai", id="openai-sdk"),
    pytest.param("responses", id="openai-responses-sdk"),
    pytest.param("anthropic", id="anthropic-sdk"),
]
REPLS = [pytest.param("inprocess", id="inprocess"), pytest.param("subprocess", id="sandbox")]


@dataclass(frozen=True)
class Seen:
    """What a model was sent: every message's text, and the last message's."""

    text: str
    last: str


Brain = Callable[[Seen], str | Awaitable[str]]


def seen_by_sdk(request: RecordedRequest) -> Seen:
    view = request.view
    texts = [view.system, *(m.text for m in view.messages)]
    return Seen(text="\n".join(texts), last=view.messages[-1].text if view.messages else "")


def seen_by_model(request: ModelRequest) -> Seen:
    texts = [m.content for m in request.messages]
    return Seen(text="\n".join(texts), last=texts[-1] if texts else "")


@dataclass
class Harness:
    model: Model
    requests: list[Seen]

    @property
    def name(self) -> str:
        return describe_model(self.model).name


@contextmanager
def harness(kind: str, brain: Brain) -> Iterator[Harness]:
    """A model of `kind` answering with `brain`; `requests` records what it was sent."""
    requests: list[Seen] = []

    async def answer(seen: Seen) -> str:
        requests.append(seen)
        reply = brain(seen)
        if inspect.isawaitable(reply):
            reply = await reply
        assert isinstance(reply, str)
        return reply

    if kind == "scripted":
        yield Harness(FunctionModel(lambda r: answer(seen_by_model(r)), name="brain"), requests)
        return

    async def handle(request: RecordedRequest) -> str:
        return await answer(seen_by_sdk(request))

    with FakeLLMServer(handler=handle) as server:
        model: Model
        if kind in ("openai", "responses"):
            from rlm.providers.openai import OpenAIModel

            api = "responses" if kind == "responses" else "chat"
            model = OpenAIModel(
                "gpt-4o-mini", base_url=server.openai_base_url, api_key="k", api=api
            )
        else:
            from rlm.providers.anthropic import AnthropicModel

            model = AnthropicModel(
                "claude-haiku-4-5", base_url=server.anthropic_base_url, api_key="k"
            )
        yield Harness(model, requests)
        assert not server.errors, server.errors


def code(source: str) -> str:
    """A reply that runs `source` in the REPL."""
    return f"```repl\n{source}\n```"
