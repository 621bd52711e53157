"""Event subscribers: OpenTelemetry spans, structured logs, trajectory files, a live view.

| subscriber | what it does |
| --- | --- |
| `OTelSubscriber` | spans: `invoke_agent rlm` > `chat {model}` / `execute_tool repl` |
| `StructlogSubscriber` | one structured log line per event |
| `TrajectoryRecorder` | JSON Lines, one event per line; `load_trajectory` reads it back |
| `ConsoleView` | a `rich` live view of runs in the terminal (`verbose=True`) |

Every run gets `default_subscribers()`: spans (to the global tracer provider) and logs,
both of which do nothing, cheaply, until the application configures OpenTelemetry or
logging. Pass the others with `on_event=`. Names are imported lazily so `import rlm`
does not load OpenTelemetry, structlog or rich.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rlm.events import Subscriber

if TYPE_CHECKING:
    from rlm.telemetry.console import ConsoleView
    from rlm.telemetry.logs import StructlogSubscriber
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


def _otel_may_be_configured() -> bool:
    # Configuring OpenTelemetry means importing opentelemetry.trace (or asking for a
    # provider by environment variable); if neither happened, no span could be recorded,
    # so do not pay for the import.
    return "opentelemetry.trace" in sys.modules or "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def default_subscribers(existing: Iterable[Subscriber] = ()) -> list[Subscriber]:
    """Subscribers every run gets: spans and logs, cheap no-ops until configured.

    `existing` are the subscribers the user attached; a kind of sink the user already
    attached (an `OTelSubscriber`, a `StructlogSubscriber`) is not added again.
    """
    from rlm.telemetry.logs import StructlogSubscriber

    existing = list(existing)
    subscribers: list[Subscriber] = []
    if not _has_instance(existing, "rlm.telemetry.otel", "OTelSubscriber") and (
        _otel_may_be_configured()
    ):
        from rlm.telemetry.otel import OTelSubscriber

        subscribers.append(OTelSubscriber())
    if not any(isinstance(s, StructlogSubscriber) for s in existing):
        subscribers.append(StructlogSubscriber())
    return subscribers


def _has_instance(subscribers: list[Subscriber], module: str, name: str) -> bool:
    loaded = sys.modules.get(module)  # not loaded: no instance can exist
    cls = getattr(loaded, name, None) if loaded is not None else None
    return cls is not None and any(isinstance(s, cls) for s in subscribers)
