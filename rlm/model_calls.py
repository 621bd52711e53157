"""Every model call of a run: budget checks, concurrency slots, events, usage and cost.

Root turns, sub-calls, the last-answer request and history compaction all call a model
through `call_model`, which reads and updates the run through the `ModelCallRun`
protocol (the engine's `_Run` in `rlm/loop.py`), so this module does not import the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from rlm.budget import Ledger
from rlm.events import Event, ModelCallFinished, ModelCallStarted, ModelRetry, clip, new_id
from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
    ModelPurpose,
    ModelRequest,
    ModelResponse,
    RetryDetails,
    RetryListener,
    ToolSpec,
    retry_listener,
)


class _ListenerSlot:
    """The run's retry listener for one call, emptied when the call ends.

    An HTTP client schedules timers during a call (aiohttp's idle-connection cleanup),
    and each keeps a copy of the call's contextvars for as long as the event loop lives,
    which, for blocking runs, outlasts the run (`rlm._sync`). Emptied, the copy does not
    keep the run (its history, its models) alive.
    """

    __slots__ = ("_listener",)

    def __init__(self, listener: RetryListener) -> None:
        self._listener: RetryListener | None = listener

    def __call__(self, details: RetryDetails) -> Awaitable[None] | None:
        listener = self._listener
        return None if listener is None else listener(details)

    def clear(self) -> None:
        self._listener = None


class ModelCallRun(Protocol):
    """The run a model call belongs to."""

    @property
    def path(self) -> str:
        """The run's place in the run tree (`rlm.call_path` prefix)."""
        ...

    @property
    def iteration(self) -> int: ...

    @property
    def request_metadata(self) -> Mapping[str, str]:
        """Metadata every request of the run carries (`ModelRequest.metadata`)."""
        ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def model_slots(self) -> asyncio.Semaphore:
        """The run tree's model-call slots (its `max_concurrency`)."""
        ...

    def _base(self) -> dict[str, Any]:
        """The fields every event of this run carries."""
        ...

    async def emit(self, event: Event) -> None: ...


async def call_model(
    run: ModelCallRun,
    model: Model,
    info: ModelInfo,
    messages: Sequence[Message],
    *,
    purpose: ModelPurpose,
    subcall_id: str | None = None,
    tools: tuple[ToolSpec, ...] = (),
    call_path: str | None = None,
) -> ModelResponse:
    """Every model call goes through here: budget, concurrency, events, usage.

    `call_path` names the call's place in the run tree (sub-calls pass theirs); root
    and final calls are named by the iteration. It reaches the model in
    `request.metadata["rlm.call_path"]`.
    """
    run.ledger.check()
    sent = list(messages)
    if sent and not sent[-1].cache_breakpoint:
        # Mark the end of this request so the next one, which repeats it as its
        # prefix, can be served from the provider's prompt cache.
        sent[-1] = replace(sent[-1], cache_breakpoint=True)
    if call_path is None:
        place = {"root": "", "final": "final", "compaction": "c"}.get(purpose, purpose)
        call_path = f"{run.path}#{place}{'' if purpose == 'final' else run.iteration}"
    request = ModelRequest(
        messages=tuple(sent),
        tools=tools,
        purpose=purpose,
        metadata={**run.request_metadata, "rlm.call_path": call_path},
    )
    call_id = new_id()
    async with run.model_slots:
        run.ledger.check()
        await run.emit(
            ModelCallStarted(
                **run._base(),
                call_id=call_id,
                model=info.name,
                provider=info.provider,
                purpose=purpose,
                iteration=run.iteration if purpose != "subcall" else None,
                subcall_id=subcall_id,
                message_count=len(sent),
                prompt_chars=sum(len(m.content) for m in sent),
                last_message=clip(sent[-1].content) if sent else "",
                server_address=info.server_address,
                server_port=info.server_port,
                temperature=(
                    request.temperature if request.temperature is not None else info.temperature
                ),
                max_tokens=request.max_output_tokens or info.max_output_tokens,
                request=request,
            )
        )

        async def on_retry(details: RetryDetails) -> None:
            await run.emit(
                ModelRetry(
                    **run._base(),
                    call_id=call_id,
                    model=details.model,
                    attempt=details.attempt,
                    wait_s=details.wait_s,
                    error_type=details.error_type,
                    error=details.error,
                )
            )

        def finished(**outcome: Any) -> ModelCallFinished:
            return ModelCallFinished(
                **run._base(),
                call_id=call_id,
                model=info.name,
                provider=info.provider,
                purpose=purpose,
                subcall_id=subcall_id,
                **outcome,
            )

        listener = _ListenerSlot(on_retry)
        token = retry_listener.set(listener)
        started = time.perf_counter()
        try:
            response = await model.complete(request)
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            await run.emit(
                finished(
                    latency_s=time.perf_counter() - started,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
            )
            raise
        finally:
            retry_listener.reset(token)
            listener.clear()
    latency = time.perf_counter() - started
    usage = response.usage if response.usage.requests else replace(response.usage, requests=1)
    cost = run.ledger.record(info.name, usage)
    await run.emit(
        finished(
            response_model=response.model,
            response_id=response.id,
            usage=usage,
            cost_usd=cost,
            latency_s=latency,
            finish_reason=response.finish_reason,
            text=clip(response.text),
            text_chars=len(response.text),
            reply=response,
        )
    )
    return response
