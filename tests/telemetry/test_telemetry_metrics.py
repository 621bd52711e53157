"""OpenTelemetry metrics: scraped through the real Prometheus exporter over loopback HTTP
and checked against the run's own `RLMResult`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import rlm
from rlm.providers.openai import OpenAIModel
from rlm.telemetry import MetricsSubscriber, default_subscribers
from rlm.testing import ScriptedModel
from rlm.testing.server import FakeLLMServer, Reply

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"

# Turn 1 kills the sandbox worker (a restart); turn 2 makes a batch of two sub-calls,
# calls a tool twice (once failing) and raises; turn 3 answers.
CRASH = "```repl\nimport os\nos._exit(3)\n```"
FAN_OUT = (
    "```repl\nparts = llm_query_batched(['a', 'b'])\nrate('EUR')\n"
    "try:\n    rate('XXX')\nexcept Exception:\n    pass\nraise ValueError(parts)\n```"
)
ANSWER = "```repl\nFINAL('done')\n```"


def rate(currency: str) -> float:
    """The exchange rate of a currency."""
    if currency == "XXX":
        raise LookupError("no such currency")
    return 1.1


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Prometheus:
    """A MeterProvider whose metrics are served by prometheus_client on 127.0.0.1."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=self.registry)]
        )
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def scrape(self) -> list[Sample]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        return [
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.provider.shutdown()


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    scraped = Prometheus()
    yield scraped
    scraped.close()


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_scraped_by_prometheus_match_the_runs_result(prometheus: Prometheus) -> None:
    script = [CRASH, FAN_OUT, Reply("sub a", input_tokens=7, output_tokens=2)]
    script += [Reply("sub b", input_tokens=9, output_tokens=3), ANSWER]
    with FakeLLMServer(script) as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
        result = rlm.run(
            "q",
            "ctx",
            model=model,
            repl="subprocess",
            tools=[rate],
            on_event=MetricsSubscriber(meter_provider=prometheus.provider),
        )
    assert result.answer == "done"
    (usage,) = result.usage.values()
    assert result.cost_usd is not None and result.cost_usd > 0

    got = prometheus.scrape()

    model_labels = {"gen_ai_request_model": "gpt-4o-mini", "gen_ai_provider_name": "openai"}
    tokens = "gen_ai_client_token_usage"
    assert total(got, f"{tokens}_sum", gen_ai_token_type="input") == result.total_input_tokens
    assert total(got, f"{tokens}_sum", gen_ai_token_type="output") == result.total_output_tokens
    assert total(got, f"{tokens}_count", gen_ai_token_type="input", **model_labels) == (
        usage.usage.requests
    )
    duration = "gen_ai_client_operation_duration_seconds"
    assert total(got, f"{duration}_count", gen_ai_operation_name="chat") == usage.usage.requests
    assert total(got, f"{duration}_sum") > 0
    assert total(got, "rlm_runs_total", rlm_stop_reason="final") == 1
    assert total(got, "rlm_run_iterations_sum") == result.iterations == 3
    assert total(got, "rlm_sub_calls_total", rlm_subcall_recursive="false") == result.sub_calls
    assert result.sub_calls == 2
    code = "rlm_code_duration_seconds"
    assert total(got, f"{code}_count") == result.code_executions == 3
    assert total(got, f"{code}_count", error_type="ValueError") == 1
    restarts = sum(e.restarted for i in result.history for e in i.executions)
    assert total(got, "rlm_sandbox_restarts_total") == restarts == 1
    assert total(got, "rlm_cost_USD_total", **model_labels) == pytest.approx(result.cost_usd)
    tools = "rlm_tool_calls_total"
    assert total(got, tools, gen_ai_tool_name="rate") == result.tool_calls == 2
    assert total(got, tools, gen_ai_tool_name="rate", error_type="ToolError") == 1

    # The dashboard shipped in docs/ queries only series that exist.
    assert dashboard_metrics() <= {s.name for s in got}


def dashboard_metrics() -> set[str]:
    """Every metric name the Grafana dashboard in docs/ queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", ())]
    names = {n for e in exprs for n in re.findall(r"\b(?:gen_ai|rlm)_[A-Za-z_]+", e)}
    # Labels share the prefixes; a metric is a name followed by a selector or a range.
    return {n for n in names if any(re.search(rf"\b{n}\s*[{{\[]", e) for e in exprs)}


def test_a_failed_model_call_is_timed_with_its_error_type(prometheus: Prometheus) -> None:
    failing = ScriptedModel([RuntimeError("boom")], name="m")

    with pytest.raises(RuntimeError, match="boom"):
        rlm.run(
            "q",
            "ctx",
            model=failing,
            repl="inprocess",
            on_event=MetricsSubscriber(meter_provider=prometheus.provider),
        )

    got = prometheus.scrape()
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(got, duration, error_type="RuntimeError", gen_ai_request_model="m") == 1
    assert total(got, "rlm_runs_total", rlm_stop_reason="error", error_type="RuntimeError") == 1
    assert total(got, "gen_ai_client_token_usage_count") == 0


def test_default_subscribers_record_metrics_once_the_app_uses_opentelemetry_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import opentelemetry.metrics  # noqa: F401  (what an application setting a provider does)

    assert any(isinstance(s, MetricsSubscriber) for s in default_subscribers())
    mine = MetricsSubscriber()
    assert not any(isinstance(s, MetricsSubscriber) for s in default_subscribers([mine]))

    monkeypatch.delitem(sys.modules, "opentelemetry.metrics")
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    assert not any(isinstance(s, MetricsSubscriber) for s in default_subscribers())


GLOBAL_PROVIDER_RUN = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import rlm
from rlm.testing import ScriptedModel

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
result = rlm.run("q", "ctx", model=ScriptedModel(["FINAL(1)"]), repl="inprocess")
data = reader.get_metrics_data()
names = sorted(
    m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
)
print(result.stop_reason, " ".join(names))
"""


def test_runs_are_measured_once_the_app_sets_a_global_meter_provider() -> None:
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_RUN],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    stop_reason, *names = done.stdout.split()
    assert stop_reason == "final"
    assert {"rlm.runs", "rlm.run.iterations", "gen_ai.client.operation.duration"} <= set(names)
