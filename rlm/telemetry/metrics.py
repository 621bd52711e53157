"""OpenTelemetry metrics built from rlm events, for dashboards.

```python
from opentelemetry.sdk.metrics import MeterProvider
import rlm
from rlm.telemetry import MetricsSubscriber

provider = MeterProvider(metric_readers=[...])      # e.g. a Prometheus reader
rlm.run(query, context, model=..., on_event=MetricsSubscriber(meter_provider=provider))
```

Without `meter_provider`, measurements go to the global provider, which the application
sets (`opentelemetry.metrics.set_meter_provider`; this class never sets it). Every run
gets a `MetricsSubscriber` by default once the application has imported
`opentelemetry.metrics` (which setting a provider needs), as runs get spans once it has
imported `opentelemetry.trace`; until a provider is set the API's instruments record
nothing. Only `opentelemetry-api` is needed.

Instruments (names in `rlm.telemetry.semconv`; the table with units and attributes is
in docs/telemetry.md):

- `gen_ai.client.token.usage` (histogram, by `gen_ai.token.type`) and
  `gen_ai.client.operation.duration` (histogram, `error.type` on failure), with the
  operation, provider, request and response model;
- `rlm.runs` (by `rlm.stop_reason`), `rlm.run.iterations`, `rlm.sub_calls`,
  `rlm.tool_calls`, `rlm.code.duration`, `rlm.sandbox.restarts`, and `rlm.cost` (US
  dollars, by provider and request model).

Token usage and duration follow the OpenTelemetry GenAI client metrics (names and
buckets in `rlm.telemetry.semconv`); a model call counts once, retries included in its
duration. Every run of a tree (child runs too) is counted; the model calls and costs of
child runs are their own, so the totals of a tree are the sums over its runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider
from opentelemetry.util.types import AttributeValue

from rlm.events import (
    CodeExecuted,
    Event,
    ModelCallFinished,
    RunFailed,
    RunFinished,
    SubcallStarted,
    ToolCallFinished,
)
from rlm.telemetry import semconv as sc
from rlm.telemetry._common import ERROR_NAME, error_type_of


class MetricsSubscriber:
    """An event subscriber that records OpenTelemetry metrics (see the module docstring).

    Args:
        meter_provider: where measurements go; default: the global provider (set by
            the application; rlm never sets it).

    Stateless between events, so one instance can serve any number of concurrent runs.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from rlm import __version__

        meter = metrics.get_meter(
            sc.INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider
        )
        self._token_usage = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Tokens used per model call, by gen_ai.token.type",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_USAGE_BUCKETS),
        )
        self._duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of model calls, retries included",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self._runs = meter.create_counter(
            sc.METRIC_RUNS, unit="{run}", description="Runs ended, by stop reason"
        )
        self._iterations = meter.create_histogram(
            sc.METRIC_RUN_ITERATIONS,
            unit="{iteration}",
            description="Iterations per run",
            explicit_bucket_boundaries_advisory=list(sc.ITERATION_BUCKETS),
        )
        self._sub_calls = meter.create_counter(
            sc.METRIC_SUB_CALLS,
            unit="{call}",
            description="llm_query and rlm_query calls started by model-written code",
        )
        self._tool_calls = meter.create_counter(
            sc.METRIC_TOOL_CALLS, unit="{call}", description="Tool calls finished"
        )
        self._code_duration = meter.create_histogram(
            sc.METRIC_CODE_DURATION,
            unit="s",
            description="Duration of each code block the model wrote",
            explicit_bucket_boundaries_advisory=list(sc.CODE_DURATION_BUCKETS),
        )
        self._restarts = meter.create_counter(
            sc.METRIC_SANDBOX_RESTARTS,
            unit="{restart}",
            description="Sandbox workers restarted after a crash or timeout",
        )
        self._cost = meter.create_counter(
            sc.METRIC_COST, unit="USD", description="Cost of model calls in US dollars"
        )
        self._handlers: Mapping[str, Callable[[Any], None]] = {
            "model_call_finished": self._model_call_finished,
            "run_finished": self._run_finished,
            "run_failed": self._run_failed,
            "subcall_started": self._subcall_started,
            "code_executed": self._code_executed,
            "tool_call_finished": self._tool_call_finished,
        }

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def __repr__(self) -> str:
        return "MetricsSubscriber()"

    def _model_call_finished(self, e: ModelCallFinished) -> None:
        attrs: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_CHAT,
            sc.GEN_AI_PROVIDER_NAME: e.provider,
            sc.GEN_AI_REQUEST_MODEL: e.model,
        }
        if e.response_model:
            attrs[sc.GEN_AI_RESPONSE_MODEL] = e.response_model
        if e.error_type is not None:
            self._duration.record(e.latency_s, {**attrs, sc.ERROR_TYPE: e.error_type})
            return
        self._duration.record(e.latency_s, attrs)
        self._token_usage.record(
            e.usage.input_tokens, {**attrs, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_INPUT}
        )
        self._token_usage.record(
            e.usage.output_tokens, {**attrs, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_OUTPUT}
        )
        if e.cost_usd is not None:
            self._cost.add(
                e.cost_usd, {sc.GEN_AI_PROVIDER_NAME: e.provider, sc.GEN_AI_REQUEST_MODEL: e.model}
            )

    def _run_finished(self, e: RunFinished) -> None:
        r = e.result
        attrs: dict[str, AttributeValue] = {
            sc.RLM_STOP_REASON: r.stop_reason,
            sc.RLM_DEPTH: e.depth,
        }
        self._iterations.record(r.iterations, attrs)
        if r.stop_reason == "error":
            match = ERROR_NAME.match(r.error or "")
            attrs[sc.ERROR_TYPE] = match.group(1) if match else "error"
        self._runs.add(1, attrs)

    def _run_failed(self, e: RunFailed) -> None:
        self._runs.add(
            1, {sc.RLM_STOP_REASON: "error", sc.RLM_DEPTH: e.depth, sc.ERROR_TYPE: e.error_type}
        )

    def _subcall_started(self, e: SubcallStarted) -> None:
        self._sub_calls.add(1, {sc.RLM_SUBCALL_RECURSIVE: e.recursive})

    def _code_executed(self, e: CodeExecuted) -> None:
        attrs: dict[str, AttributeValue] = {}
        if e.error:
            attrs[sc.ERROR_TYPE] = error_type_of(e.error)
        self._code_duration.record(e.duration_s, attrs)
        if e.restarted:
            self._restarts.add(1)

    def _tool_call_finished(self, e: ToolCallFinished) -> None:
        attrs: dict[str, AttributeValue] = {sc.GEN_AI_TOOL_NAME: e.name}
        if not e.ok:
            attrs[sc.ERROR_TYPE] = sc.ERROR_TYPE_TOOL
        self._tool_calls.add(1, attrs)
