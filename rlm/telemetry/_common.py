"""Small helpers the telemetry sinks share (no third-party imports)."""

from __future__ import annotations

import os
import re

from rlm.telemetry.semconv import CAPTURE_CONTENT_ENV

_TRUE_VALUES = frozenset({"true", "1", "yes", "on", "span_only", "span_and_event"})
ERROR_NAME = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def capture_content_from_env() -> bool:
    """True when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` asks for content."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _TRUE_VALUES


def error_type_of(traceback_text: str) -> str:
    """The exception class named on the last line of a traceback, or "error"."""
    for line in reversed(traceback_text.strip().splitlines()):
        match = ERROR_NAME.match(line.strip())
        if match:
            return match.group(1)
        if line.strip():
            break
    return "error"
