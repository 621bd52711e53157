"""OpenTelemetry spans built from rlm events.

```python
from opentelemetry.sdk.trace import TracerProvider
import rlm
from rlm.telemetry import OTelSubscriber

provider = TracerProvider()            # with your exporter
rlm.run(query, context, model=..., on_event=OTelSubscriber(tracer_provider=provider))
```

The tree of spans:

```
invoke_agent rlm                    a run (INTERNAL)
├── chat {model}                    a model call of an iteration (CLIENT)
└── execute_tool repl               a code block the model wrote (INTERNAL)
    ├── chat {sub_model}            an llm_query / llm_query_batched sub-call
    ├── execute_tool {name}         a call of a user tool (`tools=[...]`)
    └── invoke_agent rlm            an rlm_query child run, with its own tree
```

Only `opentelemetry-api` is needed. Without `tracer_provider`, spans go to the global
provider, which the application sets up (this class never sets it); when it has not, the
API's tracer records nothing and every event costs a dictionary lookup. Prompts, replies,
code and outputs are recorded only when content capture is on: `capture_content=True`,
or the `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` environment variable.

Each span is the current span, in the task that opened it, while it is open, so spans a
provider's HTTP client makes nest under the model call, and logs written during a run
carry its trace id (`make_current=False` turns that off).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from rlm.events import (
    CodeExecuted,
    CodeStarted,
    Event,
    FinalAnswer,
    HistoryCompacted,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    ModelRetry,
    ReplViolation,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from rlm.providers.base import Usage
from rlm.telemetry import semconv as sc
from rlm.telemetry._common import ERROR_NAME, capture_content_from_env, error_type_of

CANCELLED = "cancelled"
# error.type of a failed user tool call (its message says what the tool raised).
TOOL_ERROR = sc.ERROR_TYPE_TOOL


def _ns(timestamp: float) -> int:
    return int(timestamp * 1_000_000_000)


def _usage_attributes(usage: Usage) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: usage.input_tokens,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: usage.output_tokens,
    }
    if usage.cache_read_tokens:
        attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        attrs[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        attrs[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
    return attrs


def conversation_id(e: RunStarted, parent: _RunState | None = None) -> str | None:
    """The conversation a run belongs to (`gen_ai.conversation.id`): its `Session`'s id
    (every run of a session's turn carries it), inherited by child runs; else None."""
    if e.session_id:
        return e.session_id
    return parent.conversation_id if parent is not None else None


def _text_messages(role: str, text: str, finish_reason: str | None = None) -> str:
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message], ensure_ascii=False)


@dataclass(slots=True)
class _Open:
    """A span that is open, and the context its children start in."""

    span: Span
    ctx: Context
    token: Token[Context] | None = None


@dataclass(slots=True)
class _RunState:
    """One run: its span (None when nothing records) and what it still has open."""

    run: _Open | None
    open: dict[str, _Open] = field(default_factory=dict)
    conversation_id: str | None = None
    subcalls: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Subcall:
    """An `llm_query`/`rlm_query` in flight: where its model call or child run goes."""

    parent: _Open
    attributes: dict[str, AttributeValue]
    prompt: str


class OTelSubscriber:
    """An event subscriber that turns runs into OpenTelemetry spans.

    Args:
        tracer_provider: where spans go; default: the global provider (set by the
            application; rlm never sets it).
        capture_content: record queries, prompts, replies, code and outputs on spans.
            Default: the `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` variable.
        make_current: make each span current, in the task that opened it, while it is
            open (so HTTP spans of provider SDKs nest under the model call).

    One instance can serve many concurrent runs: spans are tied together by the ids the
    events carry, never by which span happens to be current. It needs every event of a
    run, from `RunStarted` on (do not subscribe it to a subset of kinds).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        capture_content: bool | None = None,
        make_current: bool = True,
    ) -> None:
        from rlm import __version__

        self._tracer = trace.get_tracer(
            sc.INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self.capture_content = (
            capture_content_from_env() if capture_content is None else capture_content
        )
        self.make_current = make_current
        self._lock = threading.Lock()
        self._runs: dict[str, _RunState] = {}
        self._subcalls: dict[str, _Subcall] = {}
        self._calls: dict[str, _Open] = {}
        self._execs: dict[str, _Open] = {}
        self._tools: dict[str, _Open] = {}
        self._handlers: Mapping[str, Callable[[Any], None]] = {
            "run_started": self._run_started,
            "iteration_started": self._iteration_started,
            "model_call_started": self._model_call_started,
            "model_call_finished": self._model_call_finished,
            "model_retry": self._model_retry,
            "code_started": self._code_started,
            "code_executed": self._code_executed,
            "repl_violation": self._repl_violation,
            "subcall_started": self._subcall_started,
            "subcall_finished": self._subcall_finished,
            "tool_call_started": self._tool_call_started,
            "tool_call_finished": self._tool_call_finished,
            "final_answer": self._final_answer,
            "history_compacted": self._history_compacted,
            "run_finished": self._run_finished,
            "run_failed": self._run_failed,
        }

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind != "run_started":
                state = self._runs.get(event.run_id)
                if state is None or state.run is None:
                    return  # a run this subscriber did not see start, or nothing records
            self._handlers[event.kind](event)

    def __repr__(self) -> str:
        return f"OTelSubscriber(capture_content={self.capture_content})"

    # -- helpers -----------------------------------------------------------------------

    def _start(
        self,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        timestamp: float,
    ) -> _Open:
        span = self._tracer.start_span(
            name, context=parent, kind=kind, attributes=attributes, start_time=_ns(timestamp)
        )
        opened = _Open(span, trace.set_span_in_context(span, parent))
        if self.make_current and span.is_recording():
            opened.token = otel_context.attach(trace.set_span_in_context(span))
        return opened

    @staticmethod
    def _end(opened: _Open, timestamp: float) -> None:
        # Only undo the attach where it was made: in that task the span is still current.
        if opened.token is not None and trace.get_current_span() is opened.span:
            otel_context.detach(opened.token)
        opened.token = None
        opened.span.end(end_time=_ns(timestamp))

    @staticmethod
    def _fail(span: Span, error_type: str, description: str | None) -> None:
        span.set_attribute(sc.ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, description))

    def _base(self, run_id: str, depth: int) -> dict[str, AttributeValue]:
        return {sc.RLM_RUN_ID: run_id, sc.RLM_DEPTH: depth}

    # -- runs --------------------------------------------------------------------------

    def _run_started(self, e: RunStarted) -> None:
        parent_state = self._runs.get(e.parent_run_id) if e.parent_run_id else None
        if parent_state is not None and parent_state.run is None:
            self._runs[e.run_id] = _RunState(None)  # the parent records nothing
            return
        attrs: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_INVOKE_AGENT,
            sc.GEN_AI_AGENT_NAME: sc.AGENT_NAME,
            sc.GEN_AI_PROVIDER_NAME: e.provider,
            sc.GEN_AI_REQUEST_MODEL: e.model,
            **self._base(e.run_id, e.depth),
            sc.RLM_SUB_MODEL: e.sub_model,
            sc.RLM_MAX_ITERATIONS: e.max_iterations,
            sc.RLM_MAX_DEPTH: e.max_depth,
            sc.RLM_CONTEXT_TYPE: e.context_type,
            sc.RLM_CONTEXT_CHARS: e.context_chars,
        }
        if e.parent_run_id:
            attrs[sc.RLM_PARENT_RUN_ID] = e.parent_run_id
        conversation = conversation_id(e, parent_state)
        if conversation is not None:
            attrs[sc.GEN_AI_CONVERSATION_ID] = conversation
        parent: Context | None = None  # a root run nests under the caller's current span
        sub = self._subcalls.get(e.parent_subcall_id) if e.parent_subcall_id else None
        if sub is not None:
            parent = sub.parent.ctx
            attrs.update(sub.attributes)
            if self.capture_content:
                attrs[sc.RLM_SUBCALL_PROMPT] = sub.prompt
        elif parent_state is not None and parent_state.run is not None:
            parent = parent_state.run.ctx
        if self.capture_content:
            attrs[sc.RLM_QUERY] = e.query
        opened = self._start(sc.SPAN_RUN, parent, SpanKind.INTERNAL, attrs, e.timestamp)
        if not opened.span.is_recording():
            opened.span.end()
            self._runs[e.run_id] = _RunState(None)
            return
        self._runs[e.run_id] = _RunState(opened, conversation_id=conversation)

    def _iteration_started(self, e: IterationStarted) -> None:
        run = self._runs[e.run_id].run
        assert run is not None
        run.span.set_attribute(sc.RLM_ITERATIONS, e.iteration)
        run.span.add_event(
            sc.EVENT_ITERATION, {sc.RLM_ITERATION: e.iteration}, timestamp=_ns(e.timestamp)
        )

    def _final_answer(self, e: FinalAnswer) -> None:
        run = self._runs[e.run_id].run
        assert run is not None
        attrs: dict[str, AttributeValue] = {
            sc.RLM_FINAL_SOURCE: e.source,
            sc.RLM_ITERATION: e.iteration,
        }
        if self.capture_content:
            attrs[sc.RLM_ANSWER] = e.answer
        run.span.add_event(sc.EVENT_FINAL_ANSWER, attrs, timestamp=_ns(e.timestamp))

    def _history_compacted(self, e: HistoryCompacted) -> None:
        run = self._runs[e.run_id].run
        assert run is not None
        attrs: dict[str, AttributeValue] = {
            sc.RLM_ITERATION: e.iteration,
            sc.RLM_COMPACTION_TOKENS_BEFORE: e.tokens_before,
            sc.RLM_COMPACTION_TOKENS_AFTER: e.tokens_after,
            sc.RLM_COMPACTION_WINDOW_TOKENS: e.window_tokens,
        }
        run.span.add_event(sc.EVENT_HISTORY_COMPACTED, attrs, timestamp=_ns(e.timestamp))

    def _run_finished(self, e: RunFinished) -> None:
        state = self._close_run(e.run_id, e.timestamp)
        assert state.run is not None
        span = state.run.span
        r = e.result
        attrs: dict[str, AttributeValue] = {
            sc.RLM_STOP_REASON: r.stop_reason,
            sc.RLM_ITERATIONS: r.iterations,
            sc.RLM_SUB_CALLS: r.sub_calls,
            sc.RLM_CODE_EXECUTIONS: r.code_executions,
            sc.RLM_HAS_ANSWER: r.answer is not None,
            sc.RLM_USAGE_INPUT_TOKENS: r.total_input_tokens,
            sc.RLM_USAGE_OUTPUT_TOKENS: r.total_output_tokens,
            sc.RLM_DURATION_S: r.duration_s,
        }
        if r.cost_usd is not None:
            attrs[sc.RLM_COST_USD] = r.cost_usd
        if r.limit is not None:
            attrs[sc.RLM_LIMIT] = r.limit
        if self.capture_content and r.answer is not None:
            attrs[sc.RLM_ANSWER] = r.answer
        span.set_attributes(attrs)
        if r.stop_reason == "error":
            match = ERROR_NAME.match(r.error or "")
            self._fail(span, match.group(1) if match else "error", r.error)
        self._end(state.run, e.timestamp)

    def _run_failed(self, e: RunFailed) -> None:
        state = self._close_run(e.run_id, e.timestamp)
        assert state.run is not None
        state.run.span.set_attribute(sc.RLM_STOP_REASON, "error")
        self._fail(state.run.span, e.error_type, f"{e.error_type}: {e.error}")
        self._end(state.run, e.timestamp)

    def _close_run(self, run_id: str, timestamp: float) -> _RunState:
        """Forget a finished run; end (newest first) whatever it left open."""
        state = self._runs.pop(run_id)
        for key, opened in reversed(list(state.open.items())):
            self._calls.pop(key, None)
            self._execs.pop(key, None)
            self._tools.pop(key, None)
            self._fail(opened.span, CANCELLED, "did not finish: the run ended first")
            self._end(opened, timestamp)
        for subcall_id in state.subcalls:
            self._subcalls.pop(subcall_id, None)
        return state

    # -- model calls -----------------------------------------------------------------

    def _model_call_started(self, e: ModelCallStarted) -> None:
        state = self._runs[e.run_id]
        assert state.run is not None
        sub = self._subcalls.get(e.subcall_id) if e.subcall_id else None
        parent = sub.parent if sub is not None else state.run
        attrs: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_CHAT,
            sc.GEN_AI_PROVIDER_NAME: e.provider,
            sc.GEN_AI_REQUEST_MODEL: e.model,
            **self._base(e.run_id, e.depth),
            sc.RLM_CALL_ID: e.call_id,
            sc.RLM_PURPOSE: e.purpose,
            sc.RLM_MESSAGE_COUNT: e.message_count,
            sc.RLM_PROMPT_CHARS: e.prompt_chars,
        }
        optional = {
            sc.SERVER_ADDRESS: e.server_address,
            sc.SERVER_PORT: e.server_port,
            sc.GEN_AI_REQUEST_MAX_TOKENS: e.max_tokens,
            sc.GEN_AI_REQUEST_TEMPERATURE: e.temperature,
            sc.GEN_AI_CONVERSATION_ID: state.conversation_id,
            sc.RLM_ITERATION: e.iteration,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        if sub is not None:
            attrs.update(sub.attributes)
        if self.capture_content:
            if e.purpose == "subcall":
                attrs[sc.GEN_AI_INPUT_MESSAGES] = _text_messages("user", e.last_message)
            else:
                attrs[sc.RLM_LAST_MESSAGE] = e.last_message
        opened = self._start(
            sc.chat_span_name(e.model), parent.ctx, SpanKind.CLIENT, attrs, e.timestamp
        )
        self._calls[e.call_id] = opened
        state.open[e.call_id] = opened

    def _model_call_finished(self, e: ModelCallFinished) -> None:
        opened = self._calls.pop(e.call_id, None)
        if opened is None:
            return
        self._runs[e.run_id].open.pop(e.call_id, None)
        span = opened.span
        if e.error_type is not None:
            self._fail(span, e.error_type, f"{e.error_type}: {e.error}")
        else:
            attrs = _usage_attributes(e.usage)
            if e.response_model:
                attrs[sc.GEN_AI_RESPONSE_MODEL] = e.response_model
            if e.response_id:
                attrs[sc.GEN_AI_RESPONSE_ID] = e.response_id
            if e.finish_reason:
                attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = (e.finish_reason,)
            if e.cost_usd is not None:
                attrs[sc.RLM_COST_USD] = e.cost_usd
            attrs[sc.RLM_RESPONSE_CHARS] = e.text_chars
            if self.capture_content:
                attrs[sc.GEN_AI_OUTPUT_MESSAGES] = _text_messages(
                    "assistant", e.text, e.finish_reason or "stop"
                )
            span.set_attributes(attrs)
        self._end(opened, e.timestamp)

    def _model_retry(self, e: ModelRetry) -> None:
        opened = self._calls.get(e.call_id) if e.call_id else None
        target = opened or self._runs[e.run_id].run
        assert target is not None
        target.span.add_event(
            sc.EVENT_RETRY,
            {
                sc.RLM_RETRY_ATTEMPT: e.attempt,
                sc.RLM_RETRY_WAIT_S: e.wait_s,
                sc.ERROR_TYPE: e.error_type,
                sc.RLM_ERROR_MESSAGE: e.error,
            },
            timestamp=_ns(e.timestamp),
        )

    # -- code ----------------------------------------------------------------------------

    def _code_started(self, e: CodeStarted) -> None:
        state = self._runs[e.run_id]
        assert state.run is not None
        attrs: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: sc.TOOL_NAME,
            sc.GEN_AI_TOOL_TYPE: sc.TOOL_TYPE,
            sc.GEN_AI_TOOL_CALL_ID: e.exec_id,
            **self._base(e.run_id, e.depth),
            sc.RLM_EXEC_ID: e.exec_id,
            sc.RLM_ITERATION: e.iteration,
            sc.RLM_CODE_INDEX: e.index,
        }
        if self.capture_content:
            attrs[sc.RLM_CODE] = e.code
        opened = self._start(sc.SPAN_CODE, state.run.ctx, SpanKind.INTERNAL, attrs, e.timestamp)
        self._execs[e.exec_id] = opened
        state.open[e.exec_id] = opened

    def _repl_violation(self, e: ReplViolation) -> None:
        opened = self._execs.get(e.exec_id) if e.exec_id else None
        target = opened or self._runs[e.run_id].run
        assert target is not None
        target.span.add_event(
            sc.EVENT_REPL_VIOLATION,
            {sc.RLM_REPL_LIMIT: e.limit, sc.RLM_ERROR_MESSAGE: e.message},
            timestamp=_ns(e.timestamp),
        )

    def _code_executed(self, e: CodeExecuted) -> None:
        opened = self._execs.pop(e.exec_id, None)
        if opened is None:
            return
        self._runs[e.run_id].open.pop(e.exec_id, None)
        span = opened.span
        if e.restarted:
            span.set_attribute(sc.RLM_CODE_RESTARTED, True)
        if self.capture_content:
            span.set_attributes({sc.RLM_CODE_STDOUT: e.stdout, sc.RLM_CODE_STDERR: e.stderr})
            if e.error:
                span.set_attribute(sc.RLM_CODE_ERROR, e.error)
        if e.error:
            kind = error_type_of(e.error)
            # A traceback's message may quote data: keep it out unless content is on.
            self._fail(span, kind, e.error.strip()[-2000:] if self.capture_content else kind)
        self._end(opened, e.timestamp)

    # -- user tools --------------------------------------------------------------------

    def _tool_call_started(self, e: ToolCallStarted) -> None:
        state = self._runs[e.run_id]
        assert state.run is not None
        parent = (self._execs.get(e.exec_id) if e.exec_id else None) or state.run
        attrs: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: e.name,
            sc.GEN_AI_TOOL_TYPE: sc.TOOL_TYPE,
            sc.GEN_AI_TOOL_CALL_ID: e.tool_call_id,
            **self._base(e.run_id, e.depth),
        }
        if self.capture_content:
            attrs[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = e.arguments
        opened = self._start(
            sc.tool_span_name(e.name), parent.ctx, SpanKind.INTERNAL, attrs, e.timestamp
        )
        self._tools[e.tool_call_id] = opened
        state.open[e.tool_call_id] = opened

    def _tool_call_finished(self, e: ToolCallFinished) -> None:
        opened = self._tools.pop(e.tool_call_id, None)
        if opened is None:
            return
        self._runs[e.run_id].open.pop(e.tool_call_id, None)
        if not e.ok:
            # The message may quote data: keep it out unless content is on.
            self._fail(opened.span, TOOL_ERROR, e.error if self.capture_content else None)
        elif self.capture_content:
            opened.span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, e.result)
        self._end(opened, e.timestamp)

    # -- sub-calls ---------------------------------------------------------------------

    def _subcall_started(self, e: SubcallStarted) -> None:
        state = self._runs[e.run_id]
        assert state.run is not None
        parent = self._execs.get(e.exec_id) if e.exec_id else None
        attrs: dict[str, AttributeValue] = {
            sc.RLM_SUBCALL_ID: e.subcall_id,
            sc.RLM_SUBCALL_RECURSIVE: e.recursive,
        }
        if e.batch_index is not None and e.batch_size is not None:
            attrs[sc.RLM_BATCH_INDEX] = e.batch_index
            attrs[sc.RLM_BATCH_SIZE] = e.batch_size
        self._subcalls[e.subcall_id] = _Subcall(parent or state.run, attrs, e.prompt)
        state.subcalls.add(e.subcall_id)

    def _subcall_finished(self, e: SubcallFinished) -> None:
        sub = self._subcalls.pop(e.subcall_id, None)
        self._runs[e.run_id].subcalls.discard(e.subcall_id)
        if sub is None or e.ok:
            return
        sub.parent.span.add_event(
            sc.EVENT_SUBCALL_FAILED,
            {**sub.attributes, sc.RLM_ERROR_MESSAGE: e.error or ""},
            timestamp=_ns(e.timestamp),
        )
