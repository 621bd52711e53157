"""The scripted fake LLM every framework is driven against: a thin adapter over
`rlm.testing.server.FakeLLMServer` (the server the provider tests use).

It serves the OpenAI chat-completions format on 127.0.0.1 with requests answered
concurrently, each by a *reply function* of the request body, so the scripted "model"
can answer per framework, per scenario and per turn, after a latency that is also a
function of the request. It adds the per-run accounting the benchmark reports
(requests, characters sent, request sizes of the root turns, most requests in flight),
keyed by the request's `model` field, which each driver sets to a token of its own.

The server runs its own event loop on a thread of this process (the benchmark runner);
the framework under test runs in another process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlm.testing.server import FakeLLMServer, RecordedRequest, Reply

ReplyFn = Callable[[dict[str, Any]], str]
LatencyFn = Callable[[dict[str, Any]], float]


def message_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text in chat messages (string or content-part form)."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def is_root_request(messages: list[dict[str, Any]]) -> bool:
    """Root turns carry a system prompt; sub-calls are a lone user message."""
    return any(m.get("role") in ("system", "developer") for m in messages)


class FakeLLM:
    """`with FakeLLM(reply, latency_s=...) as llm: ... llm.base_url ...`

    `latency_s` is seconds per request, or a function of the request body.
    """

    def __init__(self, reply: ReplyFn, *, latency_s: float | LatencyFn = 0.0) -> None:
        self.reply = reply
        self.latency_s = latency_s
        self.errors: list[str] = []
        self.server = FakeLLMServer(handler=self._handle)

    def __enter__(self) -> FakeLLM:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def base_url(self) -> str:
        return self.server.openai_base_url

    def _handle(self, request: RecordedRequest) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        try:
            text = self.reply(body)
        except Exception as exc:  # the run then fails its answer check, visibly
            self.errors.append(f"reply function: {type(exc).__name__}: {exc}")
            text = f"[fake LLM error: {exc}]"
        latency = self.latency_s(body) if callable(self.latency_s) else self.latency_s
        return Reply(text=text, delay_s=latency)

    def take_stats(self, token: str) -> dict[str, Any]:
        """What the run with this `model` token sent; forgets the recorded requests."""
        requests = [r for r in self.server.requests if r.model == token]
        stats: dict[str, Any] = {
            "requests": len(requests),
            "chars_sent": 0,
            "bytes_received": 0,
            "root_chars": [],
            "max_in_flight": self.server.max_in_flight,
        }
        for r in requests:
            messages = r.json.get("messages", []) if isinstance(r.json, dict) else []
            chars = message_chars(messages)
            stats["chars_sent"] += chars
            stats["bytes_received"] += len(r.body)
            if is_root_request(messages):
                stats["root_chars"].append(chars)
        self.server.reset()
        return stats
