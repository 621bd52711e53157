"""Fixtures for the telemetry sinks: a local tracer provider and scripted run trees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rlm.providers.base import ModelRequest
from rlm.testing import FunctionModel, ScriptedModel

# The root's first block: a batch of three plain sub-calls, then one child run.
TREE_CODE = (
    "```repl\n"
    "print(len(context))\n"
    "parts = llm_query_batched(['part a', 'part b', 'part c'])\n"
    "child = rlm_query('child task')\n"
    "print(parts, child)\n"
    "```"
)


class Spans:
    """A local TracerProvider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def finished(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished if s.name.startswith(prefix)]

    def parent_of(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        for candidate in self.finished:
            if candidate.context is not None and candidate.context.span_id == span.parent.span_id:
                return candidate
        return None


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


@pytest.fixture(autouse=True)
def unconfigured_structlog() -> Iterator[None]:
    """Every test starts and ends with structlog as an application would find it."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def sub_reply(request: ModelRequest) -> str:
    """The sub-model: child runs write code that makes one more sub-call."""
    last = request.messages[-1].content
    if request.purpose == "root":
        return "```repl\ninner = llm_query('inner ' + context[:10])\nFINAL(inner)\n```"
    return f"sub[{last[-6:]}]"


@pytest.fixture
def tree() -> tuple[ScriptedModel, FunctionModel]:
    """Root and sub-model of a run tree: the root batches three sub-calls and starts a
    child run (which makes one sub-call of its own), then answers."""
    root = ScriptedModel([TREE_CODE, "FINAL(all done)"], name="root-model")
    return root, FunctionModel(sub_reply, name="sub-model")
