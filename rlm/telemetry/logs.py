"""Structured logs from rlm events: one line per event.

Each event becomes one log call named after it (`rlm.run.started`,
`rlm.iteration.started`, `rlm.model_call.finished`, `rlm.code.executed`, ...) with the
run id and depth bound, plus `trace_id` and `span_id` when an OpenTelemetry span is
current. Where lines go:

1. a logger passed as `logger=` (a structlog logger, or a stdlib `logging.Logger`);
2. else structlog, when the application has configured it (`structlog.configure`);
3. else the stdlib logger "rlm.events", when the application has configured logging
   (some handler is installed and the level lets the line through);
4. else nowhere: rlm never prints to the host application's stdout on its own.

Levels: run, iteration, root model-call, code and final-answer lines are INFO; the
`*.started` lines of model calls, code and sub-calls, and everything about sub-calls
that succeeded, are DEBUG; retries and failed model calls or sub-calls are WARNING; a
failed run is ERROR. Queries, prompts, replies, code and outputs are included only with
`include_content=True`; otherwise lines carry sizes, ids, tokens, cost and timings.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

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
from rlm.telemetry._common import error_type_of
from rlm.telemetry.semconv import LOG_EVENT_NAMES

DEFAULT_LOGGER_NAME = "rlm.events"

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
}


def event_level(event: Event) -> int:
    """The stdlib level an event is logged at."""
    if isinstance(event, RunFailed):
        return logging.ERROR
    if isinstance(event, ModelRetry | ReplViolation):
        return logging.WARNING
    if isinstance(event, ModelCallFinished):
        if event.error_type is not None:
            return logging.WARNING
        return logging.DEBUG if event.purpose == "subcall" else logging.INFO
    if isinstance(event, SubcallFinished):
        return logging.DEBUG if event.ok else logging.WARNING
    if isinstance(event, ToolCallFinished):
        return logging.INFO if event.ok else logging.WARNING
    if isinstance(event, ModelCallStarted | CodeStarted | SubcallStarted | ToolCallStarted):
        return logging.DEBUG
    return logging.INFO


def event_fields(event: Event, *, include_content: bool = False) -> dict[str, Any]:
    """The key/value pairs logged for `event` (None values left out)."""
    fields: dict[str, Any] = {"run_id": event.run_id, "depth": event.depth}
    if event.parent_run_id is not None:
        fields["parent_run_id"] = event.parent_run_id
    if event.session_id is not None:
        fields["session_id"] = event.session_id
    content: dict[str, Any] = {}
    if isinstance(event, RunStarted):
        fields.update(
            model=event.model,
            sub_model=event.sub_model,
            provider=event.provider,
            max_iterations=event.max_iterations,
            max_depth=event.max_depth,
            context_type=event.context_type,
            context_chars=event.context_chars,
            parent_subcall_id=event.parent_subcall_id,
        )
        content["query"] = event.query
    elif isinstance(event, IterationStarted):
        fields["iteration"] = event.iteration
    elif isinstance(event, ModelCallStarted):
        fields.update(
            call_id=event.call_id,
            model=event.model,
            provider=event.provider,
            purpose=event.purpose,
            iteration=event.iteration,
            subcall_id=event.subcall_id,
            message_count=event.message_count,
            prompt_chars=event.prompt_chars,
        )
        content["last_message"] = event.last_message
    elif isinstance(event, ModelCallFinished):
        u = event.usage
        fields.update(
            call_id=event.call_id,
            model=event.model,
            provider=event.provider,
            purpose=event.purpose,
            subcall_id=event.subcall_id,
            latency_s=round(event.latency_s, 4),
        )
        if event.error_type is not None:
            fields.update(error_type=event.error_type, error=event.error)
        else:
            fields.update(
                response_model=event.response_model,
                finish_reason=event.finish_reason,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cache_read_tokens=u.cache_read_tokens or None,
                cache_write_tokens=u.cache_write_tokens or None,
                reasoning_tokens=u.reasoning_tokens or None,
                cost_usd=event.cost_usd,
                response_chars=event.text_chars,
            )
            content["text"] = event.text
    elif isinstance(event, ModelRetry):
        fields.update(
            call_id=event.call_id,
            model=event.model,
            attempt=event.attempt,
            wait_s=round(event.wait_s, 3),
            error_type=event.error_type,
            error=event.error,
        )
    elif isinstance(event, ReplViolation):
        fields.update(exec_id=event.exec_id, limit=event.limit, error=event.message)
    elif isinstance(event, CodeStarted):
        fields.update(exec_id=event.exec_id, iteration=event.iteration, index=event.index)
        content["code"] = event.code
    elif isinstance(event, CodeExecuted):
        fields.update(
            exec_id=event.exec_id,
            iteration=event.iteration,
            index=event.index,
            duration_s=round(event.duration_s, 4),
            stdout_chars=len(event.stdout),
            stderr_chars=len(event.stderr),
            error_type=error_type_of(event.error) if event.error else None,
            restarted=event.restarted or None,
        )
        content.update(code=event.code, stdout=event.stdout, stderr=event.stderr)
        if event.error:
            content["error"] = event.error
    elif isinstance(event, SubcallStarted):
        fields.update(
            subcall_id=event.subcall_id,
            exec_id=event.exec_id,
            recursive=event.recursive,
            model=event.model,
            prompt_chars=event.prompt_chars,
            batch_index=event.batch_index,
            batch_size=event.batch_size,
        )
        content["prompt"] = event.prompt
    elif isinstance(event, SubcallFinished):
        fields.update(
            subcall_id=event.subcall_id,
            ok=event.ok,
            duration_s=round(event.duration_s, 4),
            response_chars=event.response_chars,
            child_run_id=event.child_run_id,
            error=event.error,
        )
        content["response"] = event.response
    elif isinstance(event, ToolCallStarted):
        fields.update(tool_call_id=event.tool_call_id, exec_id=event.exec_id, name=event.name)
        content["arguments"] = event.arguments
    elif isinstance(event, ToolCallFinished):
        fields.update(
            tool_call_id=event.tool_call_id,
            name=event.name,
            ok=event.ok,
            duration_s=round(event.duration_s, 4),
            result_chars=event.result_chars,
            error=event.error,
        )
        content["result"] = event.result
    elif isinstance(event, FinalAnswer):
        fields.update(
            source=event.source,
            iteration=event.iteration,
            answer_chars=len(event.answer),
            resolved_variable=event.resolved_variable,
            from_prose=event.from_prose,
        )
        content["answer"] = event.answer
    elif isinstance(event, HistoryCompacted):
        fields.update(
            iteration=event.iteration,
            model=event.model,
            window_tokens=event.window_tokens,
            messages_before=event.messages_before,
            messages_after=event.messages_after,
            tokens_before=event.tokens_before,
            tokens_after=event.tokens_after,
            summary_chars=event.summary_chars,
        )
        content["summary"] = event.summary
    elif isinstance(event, RunFinished):
        r = event.result
        fields.update(
            stop_reason=r.stop_reason,
            limit=r.limit,
            has_answer=r.answer is not None,
            iterations=r.iterations,
            sub_calls=r.sub_calls,
            code_executions=r.code_executions,
            input_tokens=r.total_input_tokens,
            output_tokens=r.total_output_tokens,
            cost_usd=r.cost_usd,
            duration_s=round(r.duration_s, 4),
            error=r.error,
        )
        if r.answer is not None:
            content["answer"] = r.answer
    elif isinstance(event, RunFailed):
        fields.update(error_type=event.error_type, error=event.error)
    if include_content:
        fields.update(content)
    return {k: v for k, v in fields.items() if v is not None}


def current_trace_ids() -> dict[str, str]:
    """`trace_id` and `span_id` (hex) of the current OpenTelemetry span, if there is one."""
    if "opentelemetry.trace" not in sys.modules:
        return {}  # nobody imported OpenTelemetry, so no span can be current
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def _operation_key(event: Event) -> tuple[str, str, str] | None:
    if isinstance(event, RunStarted | RunFinished | RunFailed):
        return ("run", event.run_id, event.run_id)
    if isinstance(event, ModelCallStarted | ModelCallFinished):
        return ("call", event.run_id, event.call_id)
    if isinstance(event, CodeStarted | CodeExecuted):
        return ("code", event.run_id, event.exec_id)
    if isinstance(event, ToolCallStarted | ToolCallFinished):
        return ("tool", event.run_id, event.tool_call_id)
    return None


def _logfmt(value: Any) -> str:
    if isinstance(value, str):
        if value and all(c.isalnum() or c in "._-/:@" for c in value):
            return value
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class StructlogSubscriber:
    """An event subscriber writing one structured log line per event.

    Args:
        logger: where to log: a structlog logger, or a stdlib `logging.Logger`. Default:
            structlog's `get_logger(name)` if the application configured structlog, else
            the stdlib logger `name` if the application configured logging, else nothing.
        name: the logger name used when `logger` is not given ("rlm.events").
        include_content: also log queries, prompts, replies, code and outputs.

    Without configuration it costs a couple of attribute lookups per event and never
    imports structlog. On the stdlib path the message reads `rlm.code.executed
    run_id=... depth=0 ...` and the fields are also on the record as `record.rlm`.
    """

    def __init__(
        self,
        logger: Any = None,
        *,
        name: str = DEFAULT_LOGGER_NAME,
        include_content: bool = False,
    ) -> None:
        self.name = name
        self.include_content = include_content
        self._explicit = logger
        self._stdlib = logger if isinstance(logger, logging.Logger) else logging.getLogger(name)
        self._structlog: Any = None
        self._span_ids: dict[tuple[str, str, str], dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"StructlogSubscriber(name={self.name!r}, include_content={self.include_content})"

    def _sink(self, level: int) -> Callable[[int, str, dict[str, Any]], None] | None:
        explicit = self._explicit
        if explicit is not None and not isinstance(explicit, logging.Logger):
            return self._to_structlog(explicit)
        if explicit is None:
            structlog = sys.modules.get("structlog")
            if structlog is not None and structlog.is_configured():
                if self._structlog is None:
                    self._structlog = structlog.get_logger(self.name)
                return self._to_structlog(self._structlog)
        if self._stdlib.isEnabledFor(level) and (
            explicit is not None or self._stdlib.hasHandlers()
        ):
            return self._to_stdlib
        return None

    @staticmethod
    def _to_structlog(logger: Any) -> Callable[[int, str, dict[str, Any]], None]:
        def write(level: int, name: str, fields: dict[str, Any]) -> None:
            getattr(logger, _LEVEL_NAMES[level])(name, **fields)

        return write

    def _to_stdlib(self, level: int, name: str, fields: dict[str, Any]) -> None:
        text = " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        self._stdlib.log(level, "%s %s", name, text, extra={"rlm": {"event": name, **fields}})

    def __call__(self, event: Event) -> None:
        level = event_level(event)
        sink = self._sink(level)
        if sink is None:
            return
        fields = event_fields(event, include_content=self.include_content)
        fields.update(self._trace_ids(event))
        sink(level, LOG_EVENT_NAMES[event.kind], fields)

    def _trace_ids(self, event: Event) -> dict[str, str]:
        # An operation's span is current from its start event until its end event, but a
        # tracing subscriber may already have closed it when the end event is logged:
        # end lines reuse the ids seen at the start.
        ids = current_trace_ids()
        key = _operation_key(event)
        if key is None:
            return ids
        if isinstance(event, RunStarted | ModelCallStarted | CodeStarted):
            if ids:
                self._span_ids[key] = ids
            return ids
        found = self._span_ids.pop(key, None) or ids
        if isinstance(event, RunFinished | RunFailed):  # forget calls that never finished
            for stale in [k for k in self._span_ids if k[1] == event.run_id]:
                self._span_ids.pop(stale, None)
        return found
