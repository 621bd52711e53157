"""Event subscribers: OpenTelemetry spans, structured logs, trajectory files, a live view.

| subscriber | what it does |
| --- | --- |
| `OTelSubscriber` | spans: `invoke_agent rlm` > `chat {model}` / `execute_tool repl` |
| `MetricsSubscriber` | metrics: GenAI token usage and call duration, runs, cost, ... |
| `StructlogSubscriber` | one structured log line per event |
| `TrajectoryRecorder` | JSON Lines, one event per line; `load_trajectory` reads it back |
| `ConsoleView` | a `rich` live view of runs in the terminal (`verbose=True`) |

Every run gets `default_subscribers()`: spans and metrics (to the global tracer and
meter providers) and logs, which do nothing, cheaply, until the application configures
OpenTelemetry or logging. Pass the others with `on_event=`. Names are imported lazily
so `import rlm` does not load OpenTelemetry, structlog or rich.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rlm.events import Subscriber

if TYPE_CHECKING:
    from rlm.telemetry.console import ConsoleView
    from rlm.telemetry.logs import StructlogSubscriber
    from rlm.telemetry.metrics import MetricsSubscriber
    from rlm.telemetry.otel import OTelSubscriber
    from rlm.telemetry.trajectory import (
        CodeRecord,
        IterationRecord,
        ModelCallRecord,
        RunRecord,
        SubcallRecord,
        Trajectory,
        TrajectoryRecorder,
        load_trajectory,
    )

__all__ = [
    "CodeRecord",
    "ConsoleView",
    "IterationRecord",
    "MetricsSubscriber",
    "ModelCallRecord",
    "OTelSubscriber",
    "RunRecord",
    "StructlogSubscriber",
    "SubcallRecord",
    "Trajectory",
    "TrajectoryRecorder",
    "default_subscribers",
    "load_trajectory",
]

_LAZY = {
    "ConsoleView": "rlm.telemetry.console",
    "StructlogSubscriber": "rlm.telemetry.logs",
    "OTelSubscriber": "rlm.telemetry.otel",
    "MetricsSubscriber": "rlm.telemetry.metrics",
    "CodeRecord": "rlm.telemetry.trajectory",
    "IterationRecord": "rlm.telemetry.trajectory",
    "ModelCallRecord": "rlm.telemetry.trajectory",
    "RunRecord": "rlm.telemetry.trajectory",
    "SubcallRecord": "rlm.telemetry.trajectory",
    "Trajectory": "rlm.telemetry.trajectory",
    "TrajectoryRecorder": "rlm.telemetry.trajectory",
    "load_trajectory": "rlm.telemetry.trajectory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlm.telemetry' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def _otel_may_be_configured(api: str, provider_env: str) -> bool:
    # Configuring OpenTelemetry means importing its API module (or naming a provider by
    # environment variable); if neither happened, nothing could be recorded, so do not
    # pay for the import.
    return api in sys.modules or provider_env in os.environ


def default_subscribers(existing: Iterable[Subscriber] = ()) -> list[Subscriber]:
    """Subscribers every run gets: spans, metrics and logs, cheap no-ops until configured.

    `existing` are the subscribers the user attached; a kind of sink the user already
    attached (an `OTelSubscriber`, a `MetricsSubscriber`, a `StructlogSubscriber`) is
    not added again.
    """
    from rlm.telemetry.logs import StructlogSubscriber

    existing = list(existing)
    subscribers: list[Subscriber] = []
    if not _has_instance(existing, "rlm.telemetry.otel", "OTelSubscriber") and (
        _otel_may_be_configured("opentelemetry.trace", "OTEL_PYTHON_TRACER_PROVIDER")
    ):
        from rlm.telemetry.otel import OTelSubscriber

        subscribers.append(OTelSubscriber())
    if not _has_instance(existing, "rlm.telemetry.metrics", "MetricsSubscriber") and (
        _otel_may_be_configured("opentelemetry.metrics", "OTEL_PYTHON_METER_PROVIDER")
    ):
        subscribers.append(_global_metrics())
    if not any(isinstance(s, StructlogSubscriber) for s in existing):
        subscribers.append(StructlogSubscriber())
    return subscribers


@functools.cache
def _global_metrics() -> Subscriber:
    """One subscriber for the global meter provider: its instruments are made once, and
    follow the provider the application sets, even after they were made."""
    from rlm.telemetry.metrics import MetricsSubscriber

    return MetricsSubscriber()


def _has_instance(subscribers: list[Subscriber], module: str, name: str) -> bool:
    loaded = sys.modules.get(module)  # not loaded: no instance can exist
    cls = getattr(loaded, name, None) if loaded is not None else None
    return cls is not None and any(isinstance(s, cls) for s in subscribers)
