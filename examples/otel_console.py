"""Print the OpenTelemetry spans of an RLM run with the SDK's console exporter.

Offline by default: a scripted root model batches three sub-calls and starts a child run
(`rlm_query`), so the whole span tree shows without an API key:

    uv run python examples/otel_console.py

With a real model (and its API key in the environment):

    RLM_MODEL=openai/gpt-4o-mini uv run python examples/otel_console.py

Add `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` to see prompts, replies,
code and outputs on the spans, and `RLM_SPANS_JSON=1` for the exporter's full JSON.
Needs `opentelemetry-sdk` (a dev dependency of rlm; `pip install opentelemetry-sdk`).
"""

from __future__ import annotations

import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rlm
from rlm.providers.base import ModelRequest
from rlm.telemetry import OTelSubscriber
from rlm.testing import FunctionModel, ScriptedModel

CONTEXT = "\n".join(
    f"{name}: {amount} USD"
    for name, amount in [("rent", 1200), ("food", 430), ("travel", 310), ("books", 45)]
)
QUERY = "Which expense is largest, and what do the expenses add up to?"


def scripted_models() -> tuple[ScriptedModel, FunctionModel]:
    """An offline root model and sub-model that exercise sub-calls and a child run."""
    root = ScriptedModel(
        [
            "```repl\n"
            "lines = context.splitlines()\n"
            "kinds = llm_query_batched([f'Classify: {line}' for line in lines[:3]])\n"
            "total = rlm_query('Add up these amounts:\\n' + context)\n"
            "print(kinds, total)\n"
            "```",
            "FINAL(rent is the largest; the expenses add up to 1985 USD)",
        ],
        name="scripted-root",
    )

    def sub(request: ModelRequest) -> str:
        if request.purpose == "root":  # the child run's own turn
            return (
                "```repl\n"
                "amounts = [int(l.split(': ')[1].split()[0]) for l in context.splitlines()[1:]]\n"
                "FINAL(str(sum(amounts)))\n"
                "```"
            )
        return "housing" if "rent" in request.messages[-1].content else "other"

    return root, FunctionModel(sub, name="scripted-sub")


def one_line(span: ReadableSpan) -> str:
    """A compact line per span, printed as each one ends (children before parents)."""
    attrs = span.attributes or {}
    ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    tokens = attrs.get("gen_ai.usage.input_tokens")
    extra = f" tokens={tokens}/{attrs.get('gen_ai.usage.output_tokens')}" if tokens else ""
    return f"ended: {span.name:<28} {span.kind.name:<8} {ms:8.1f} ms{extra}\n"


def print_tree(spans: list[ReadableSpan]) -> None:
    """Draw the finished spans as a tree, parents first."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans if s.context is not None}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)

    def draw(parent: int | None, indent: str) -> None:
        for span in children.get(parent, []):
            attrs = span.attributes or {}
            status = "" if span.status.is_ok else f"  [{span.status.status_code.name}]"
            depth = attrs.get("rlm.depth", "")
            print(f"{indent}{span.name}  ({span.kind.name.lower()}, depth {depth}){status}")
            assert span.context is not None
            draw(span.context.span_id, indent + "    ")

    draw(None, "")


def main() -> int:
    provider = TracerProvider(resource=Resource.create({"service.name": "rlm-example"}))
    if os.environ.get("RLM_SPANS_JSON"):
        exporter = ConsoleSpanExporter()  # the SDK's full JSON per span
    else:
        exporter = ConsoleSpanExporter(formatter=one_line)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    # A library never sets the global provider; an application may. Here we hand ours to
    # the subscriber instead, which is what a test or a multi-tenant app would do.
    tracing = OTelSubscriber(tracer_provider=provider)

    real_model = os.environ.get("RLM_MODEL")
    if real_model:
        result = rlm.run(QUERY, CONTEXT, model=real_model, max_depth=2, on_event=tracing)
    else:
        root, sub = scripted_models()
        result = rlm.run(
            QUERY,
            CONTEXT,
            model=root,
            sub_model=sub,
            max_depth=2,
            repl="inprocess",  # scripted, trusted code only
            on_event=tracing,
        )
    provider.force_flush()
    print(f"\nanswer: {result.answer}  (stop: {result.stop_reason})\n")
    print_tree(list(collected.get_finished_spans()))
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
