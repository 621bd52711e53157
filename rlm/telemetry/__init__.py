"""Event subscribers: OpenTelemetry spans, structlog logs, trajectory files, console view."""

from __future__ import annotations

from rlm.events import Subscriber


def default_subscribers() -> list[Subscriber]:
    """Subscribers every run gets (cheap no-ops unless the application configured them)."""
    return []
