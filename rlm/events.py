"""Typed events and the `EventBus` that carries them.

Every step of a run emits one frozen event. All events share a base (`run_id`,
`parent_run_id`, `depth`, `timestamp`, and `session_id` for the turns of a `Session`)
and carry a `kind` discriminator; `Event` is the union of all of them. Events serialise
to JSON (`event_to_dict`, `event_to_json`) and back (`event_from_dict`,
`event_from_json`).

Ids tie the tree together: a `ModelCallStarted` made by `llm_query` carries the
`subcall_id` of its `SubcallStarted`, which carries the `exec_id` of the `CodeStarted`
that made it (as does a `ToolCallStarted`); a child run's `RunStarted` carries its
`parent_run_id` and the `parent_subcall_id` that started it.

Long texts (prompts, replies, outputs) are cut to `MAX_EVENT_TEXT` characters in events;
the `*_chars` fields keep the true lengths. Two fields are kept whole because replay and
resume need the exact exchange: `ModelCallStarted.request` (the request as sent) and
`ModelCallFinished.reply` (the model's reply). The log and span subscribers do not read
them; the trajectory file stores each distinct message once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from rlm._serde import from_jsonable, to_jsonable
from rlm.errors import ConfigurationError
from rlm.providers.base import ModelPurpose, ModelRequest, ModelResponse, Usage
from rlm.result import RLMResult

logger = logging.getLogger("rlm")

MAX_EVENT_TEXT = 20_000


def new_id() -> str:
    """A short random id for runs, calls, executions and sub-calls."""
    # 16 hex digits as before (half a uuid4), without building a UUID: two per sub-call.
    return os.urandom(8).hex()


def clip(text: str, limit: int = MAX_EVENT_TEXT) -> str:
    """Cut `text` to `limit` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


@dataclass(frozen=True, kw_only=True, slots=True)
class BaseEvent:
    """Fields every event carries."""

    run_id: str
    parent_run_id: str | None = None
    depth: int = 0
    timestamp: float = field(default_factory=time.time)
    # Set on every event of a `Session`'s turns (and their child runs).
    session_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStarted(BaseEvent):
    kind: Literal["run_started"] = "run_started"
    query: str
    model: str
    sub_model: str
    provider: str = "unknown"
    max_iterations: int
    max_depth: int
    context_type: str
    context_chars: int
    parent_subcall_id: str | None = None
    context_fingerprint: str = ""
    model_context_window: int | None = None
    sub_model_context_window: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class IterationStarted(BaseEvent):
    kind: Literal["iteration_started"] = "iteration_started"
    iteration: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCallStarted(BaseEvent):
    kind: Literal["model_call_started"] = "model_call_started"
    call_id: str
    model: str
    provider: str = "unknown"
    purpose: ModelPurpose
    iteration: int | None = None
    subcall_id: str | None = None
    message_count: int
    prompt_chars: int
    last_message: str = ""
    server_address: str | None = None
    server_port: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    request: ModelRequest | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCallFinished(BaseEvent):
    kind: Literal["model_call_finished"] = "model_call_finished"
    call_id: str
    model: str
    provider: str = "unknown"
    purpose: ModelPurpose
    subcall_id: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float
    finish_reason: str | None = None
    text: str = ""
    text_chars: int = 0
    error_type: str | None = None
    error: str | None = None
    reply: ModelResponse | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRetry(BaseEvent):
    kind: Literal["model_retry"] = "model_retry"
    call_id: str | None
    model: str
    attempt: int
    wait_s: float
    error_type: str
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeStarted(BaseEvent):
    kind: Literal["code_started"] = "code_started"
    exec_id: str
    iteration: int
    index: int
    code: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeExecuted(BaseEvent):
    kind: Literal["code_executed"] = "code_executed"
    exec_id: str
    iteration: int
    index: int
    code: str
    stdout: str
    stderr: str
    error: str | None
    duration_s: float
    restarted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplViolation(BaseEvent):
    """The REPL worker went past a bound of the host (`limit`: a `ReplLimits` name such
    as "bytes_in_flight", or "protocol") and was killed; its variables are lost.
    `exec_id` is the block it happened in (None: while reading a `FINAL_VAR`)."""

    kind: Literal["repl_violation"] = "repl_violation"
    exec_id: str | None
    limit: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SubcallStarted(BaseEvent):
    kind: Literal["subcall_started"] = "subcall_started"
    subcall_id: str
    exec_id: str | None
    recursive: bool
    model: str
    prompt: str
    prompt_chars: int
    batch_index: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SubcallFinished(BaseEvent):
    kind: Literal["subcall_finished"] = "subcall_finished"
    subcall_id: str
    ok: bool
    response: str
    response_chars: int
    error: str | None = None
    duration_s: float
    child_run_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallStarted(BaseEvent):
    """The model's code called a user tool (`arguments`: their JSON, clipped)."""

    kind: Literal["tool_call_started"] = "tool_call_started"
    tool_call_id: str
    exec_id: str | None
    name: str
    arguments: str
    call_path: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallFinished(BaseEvent):
    """A tool call ended: `result` is a preview of the JSON it returned, or `error` the
    message the model's code got. `value` is the whole JSON value, kept for resume
    (the log and span subscribers do not read it); `replayed` is set when a resume
    answered the call from its recording instead of calling the tool."""

    kind: Literal["tool_call_finished"] = "tool_call_finished"
    tool_call_id: str
    name: str
    ok: bool
    result: str = ""
    result_chars: int = 0
    error: str | None = None
    duration_s: float
    value: Any = None
    replayed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class FinalAnswer(BaseEvent):
    """The run's answer. `source`: "code" (FINAL/FINAL_VAR called in code), "text" (a
    marker in the reply), "forced" (the reply to the last-answer request after
    `max_iterations`). `resolved_variable` names the REPL variable whose value answered
    a bare `FINAL(name)`; `from_prose` says the last-answer reply gave no answer that
    could be resolved, so the answer is that reply's text outside code."""

    kind: Literal["final_answer"] = "final_answer"
    answer: str
    source: Literal["code", "text", "forced"]
    iteration: int
    resolved_variable: str | None = None
    from_prose: bool = False

    @property
    def how(self) -> str:
        """The source in words, with how the answer was read when that is not plain."""
        if self.resolved_variable is not None:
            return f"{self.source}, the value of variable {self.resolved_variable}"
        if self.from_prose:
            return f"{self.source}, from the reply's prose"
        return self.source


@dataclass(frozen=True, kw_only=True, slots=True)
class HistoryCompacted(BaseEvent):
    """The run's message history neared the model's window and was replaced by a summary.

    Sizes are estimates in tokens (about four characters a token); `summary` is what the
    model wrote, which the loop goes on from (the REPL keeps every variable).
    """

    kind: Literal["history_compacted"] = "history_compacted"
    iteration: int
    model: str
    window_tokens: int
    threshold: float
    messages_before: int
    messages_after: int
    tokens_before: int
    tokens_after: int
    summary: str
    summary_chars: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFinished(BaseEvent):
    kind: Literal["run_finished"] = "run_finished"
    result: RLMResult


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFailed(BaseEvent):
    kind: Literal["run_failed"] = "run_failed"
    error_type: str
    error: str


Event: TypeAlias = (
    RunStarted
    | IterationStarted
    | ModelCallStarted
    | ModelCallFinished
    | ModelRetry
    | CodeStarted
    | CodeExecuted
    | ReplViolation
    | SubcallStarted
    | SubcallFinished
    | ToolCallStarted
    | ToolCallFinished
    | FinalAnswer
    | HistoryCompacted
    | RunFinished
    | RunFailed
)

EventKind: TypeAlias = Literal[
    "run_started",
    "iteration_started",
    "model_call_started",
    "model_call_finished",
    "model_retry",
    "code_started",
    "code_executed",
    "repl_violation",
    "subcall_started",
    "subcall_finished",
    "tool_call_started",
    "tool_call_finished",
    "final_answer",
    "history_compacted",
    "run_finished",
    "run_failed",
]

EVENT_TYPES: dict[str, type[Any]] = {
    str(cls.__dataclass_fields__["kind"].default): cls
    for cls in (
        RunStarted,
        IterationStarted,
        ModelCallStarted,
        ModelCallFinished,
        ModelRetry,
        CodeStarted,
        CodeExecuted,
        ReplViolation,
        SubcallStarted,
        SubcallFinished,
        ToolCallStarted,
        ToolCallFinished,
        FinalAnswer,
        HistoryCompacted,
        RunFinished,
        RunFailed,
    )
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of `event`, with its `kind`."""
    data: dict[str, Any] = to_jsonable(event)
    return data


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `event_to_dict` output; raises ValueError for unknown kinds."""
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    event: Event = from_jsonable(cls, data)
    return event


def event_to_json(event: Event) -> str:
    return json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":"))


def event_from_json(line: str) -> Event:
    return event_from_dict(json.loads(line))


Subscriber: TypeAlias = Callable[[Event], Awaitable[None] | None]
OnEvent: TypeAlias = Subscriber | Sequence[Subscriber] | None


def as_subscribers(on_event: OnEvent) -> list[Subscriber]:
    """Normalise an `on_event=` argument (None, one callable, or several)."""
    if on_event is None:
        return []
    if callable(on_event):
        return [on_event]
    given: list[object] = (
        list(on_event)
        if isinstance(on_event, Iterable) and not isinstance(on_event, str | bytes)
        else [on_event]
    )
    subscribers: list[Subscriber] = []
    for subscriber in given:
        if not callable(subscriber):
            raise ConfigurationError(
                f"on_event takes a callable that receives each event (or a list of them), "
                f"not {subscriber!r} ({type(subscriber).__name__})"
            )
        subscribers.append(subscriber)
    return subscribers


class EventBus:
    """Delivers events to subscribers in the order they were emitted.

    A subscriber is a plain callable or an async one; async subscribers are awaited
    before the next event is delivered, so a slow one slows the run (hand work to a queue
    if that matters). A subscriber that raises an `Exception` is logged on the "rlm"
    logger and never breaks the run; one that raises KeyboardInterrupt, SystemExit or
    another `BaseException` ends the run (closed, with its `RunFailed`) and the exception
    reaches the caller.
    """

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._subs: list[tuple[Subscriber, frozenset[str] | None]] = [
            (s, None) for s in subscribers
        ]

    def subscribe(
        self, subscriber: Subscriber, kinds: Iterable[EventKind] | None = None
    ) -> Callable[[], None]:
        """Add a subscriber, for all events or for `kinds`; returns a function to remove it."""
        unknown = set(kinds or ()) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}; known: {sorted(EVENT_TYPES)}")
        entry = (subscriber, frozenset(kinds) if kinds is not None else None)
        self._subs.append(entry)

        def unsubscribe() -> None:
            if entry in self._subs:
                self._subs.remove(entry)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subs)

    async def emit(self, event: Event) -> None:
        """Deliver `event` to every matching subscriber.

        A subscriber raising a `BaseException` that is not an `Exception`
        (KeyboardInterrupt, SystemExit...) does not keep the event from the others: it
        is raised once every subscriber has the event, and ends the run.
        """
        interrupt: BaseException | None = None
        for subscriber, kinds in list(self._subs):
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                outcome = subscriber(event)
                # Most subscribers are plain functions: None is not awaitable, and
                # asking inspect costs an ABC check per event and subscriber.
                if outcome is not None and inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.warning(
                    "rlm event subscriber %r failed on %s; the run goes on",
                    subscriber,
                    event.kind,
                    exc_info=True,
                )
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt
