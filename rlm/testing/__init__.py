"""Test doubles for code that uses rlm: scripted models that fail loudly.

```python
from rlm.testing import ScriptedModel

model = ScriptedModel([
    "```repl\\nprint(len(context))\\n```",
    "FINAL(42)",
])
result = rlm.run("How long?", context="x" * 42, model=model)
model.assert_exhausted()          # every step was used
assert len(model.calls) == 2       # the requests it received
```

`ReplayModel` and `Cassette` (`rlm.testing.replay`) answer from a recorded run instead,
and the `rlm_cassette` pytest fixture (`rlm.testing.pytest_plugin`) stores cassettes next
to your tests.

Steps are reply strings, `ModelResponse`s, callables of the `ModelRequest` (sync or
async, returning either), or exceptions to raise. Usage is estimated from text length
(about four characters a token) so usage, cost and telemetry paths run in tests.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from rlm.errors import ScriptError
from rlm.providers.base import ModelRequest, ModelResponse, Usage

StepResult: TypeAlias = str | ModelResponse
Step: TypeAlias = (
    str
    | ModelResponse
    | BaseException
    | Callable[[ModelRequest], StepResult | Awaitable[StepResult]]
)

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough token count for text: about four characters a token, at least 1."""
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def estimate_usage(request: ModelRequest, reply: str) -> Usage:
    sent = sum(len(m.content) for m in request.messages) + 4 * len(request.messages)
    return Usage(
        input_tokens=estimate_tokens("x" * sent), output_tokens=estimate_tokens(reply), requests=1
    )


def _finish(request: ModelRequest, value: StepResult, name: str) -> ModelResponse:
    if isinstance(value, ModelResponse):
        if value.usage == Usage():
            return ModelResponse(
                text=value.text,
                usage=estimate_usage(request, value.text),
                model=value.model or name,
                finish_reason=value.finish_reason or "stop",
                tool_calls=value.tool_calls,
            )
        return value
    if isinstance(value, str):
        return ModelResponse(
            text=value, usage=estimate_usage(request, value), model=name, finish_reason="stop"
        )
    raise ScriptError(
        f"a step of {name!r} returned {type(value).__name__}; return a str or ModelResponse"
    )


class ScriptedModel:
    """A model that replies with a fixed script of steps, in order.

    Raises `ScriptError` when asked for more replies than it has; `remaining` lists the
    unused steps and `assert_exhausted()` fails if any are left. Every request is kept in
    `calls`. Safe to share between concurrent calls (steps are taken in call order).
    """

    provider = "scripted"

    def __init__(
        self,
        steps: Iterable[Step],
        *,
        name: str = "scripted",
        context_window: int | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.name = name
        self.context_window = context_window
        self.latency_s = latency_s
        self._steps: list[Step] = list(steps)
        self._next = 0
        self._lock = threading.Lock()
        self.calls: list[ModelRequest] = []

    def __getstate__(self) -> dict[str, Any]:
        # The lock cannot be pickled; a copy (e.g. sent to a Ray worker) goes on with the
        # rest of the script on its own and records its own calls.
        state = dict(self.__dict__)
        del state["_lock"]
        state["calls"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def remaining(self) -> list[Step]:
        """Steps not used yet."""
        with self._lock:
            return self._steps[self._next :]

    def assert_exhausted(self) -> None:
        """Raise `ScriptError` if some steps were never used."""
        left = self.remaining
        if left:
            shown = "; ".join(repr(s)[:80] for s in left[:5])
            raise ScriptError(f"{self.name!r} has {len(left)} unused step(s): {shown}")

    async def complete(self, request: ModelRequest) -> ModelResponse:
        with self._lock:
            self.calls.append(request)
            if self._next >= len(self._steps):
                last = request.messages[-1].content[:200] if request.messages else ""
                raise ScriptError(
                    f"{self.name!r} ran out of steps: call {len(self.calls)} but the script "
                    f"has {len(self._steps)} step(s). The request's last message began: {last!r}"
                )
            step = self._steps[self._next]
            self._next += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            value = step(request)
            if inspect.isawaitable(value):
                value = await value
            return _finish(request, value, self.name)
        return _finish(request, step, self.name)


class FunctionModel:
    """A model whose replies come from a function of the request (sync or async).

    ```python
    sub = FunctionModel(lambda req: str(len(req.messages[-1].content)))
    ```
    """

    provider = "function"

    def __init__(
        self,
        fn: Callable[[ModelRequest], StepResult | Awaitable[StepResult]],
        *,
        name: str = "function",
        context_window: int | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.name = name
        self.context_window = context_window
        self.latency_s = latency_s
        self._fn = fn
        self._lock = threading.Lock()
        self.calls: list[ModelRequest] = []

    def __getstate__(self) -> dict[str, Any]:
        # The lock cannot be pickled; a copy records its own calls (send the function
        # with cloudpickle when it is a lambda or a closure).
        state = dict(self.__dict__)
        del state["_lock"]
        state["calls"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        with self._lock:
            self.calls.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        value = self._fn(request)
        if inspect.isawaitable(value):
            value = await value
        return _finish(request, value, self.name)


from rlm.testing.cassette import Cassette  # noqa: E402
from rlm.testing.replay import RecordedCall, ReplayModel  # noqa: E402

__all__ = [
    "Cassette",
    "FunctionModel",
    "RecordedCall",
    "ReplayModel",
    "ScriptedModel",
    "estimate_tokens",
    "estimate_usage",
]
