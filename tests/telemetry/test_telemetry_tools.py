"""Tool calls in every sink: spans, log lines, trajectory files, the viewer tree, the console."""

from __future__ import annotations

import io

from rich.console import Console
from structlog.testing import capture_logs

import rlm
from rlm.telemetry import ConsoleView, OTelSubscriber, TrajectoryRecorder, load_trajectory
from rlm.telemetry import semconv as sc
from rlm.telemetry.logs import StructlogSubscriber
from rlm.testing import ScriptedModel
from rlm.viewer.tree import build_tree

CODE = (
    "```repl\n"
    "print(double(21))\n"
    "try:\n"
    "    double(-1)\n"
    "except Exception as exc:\n"
    "    print(exc)\n"
    "```"
)


def double(n: int) -> int:
    """Twice n; refuses negatives."""
    if n < 0:
        raise ValueError("negative")
    return 2 * n


def run(**kwargs: object) -> rlm.RLMResult:
    return rlm.run(
        "q",
        "ctx",
        model=ScriptedModel([CODE, "FINAL(42)"]),
        repl="inprocess",
        tools=[double],
        **kwargs,  # type: ignore[arg-type]
    )


def test_each_tool_call_is_a_span_under_its_code_span(spans) -> None:
    result = run(on_event=OTelSubscriber(tracer_provider=spans.provider, capture_content=True))
    assert result.tool_calls == 2
    tool_spans = spans.named("execute_tool double")
    assert len(tool_spans) == 2
    code_span = spans.named(sc.SPAN_CODE)[0]
    for span in tool_spans:
        assert spans.parent_of(span) is code_span
        assert span.attributes is not None
        assert span.attributes[sc.GEN_AI_TOOL_NAME] == "double"
        assert span.attributes[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
    ok, failed = tool_spans
    assert ok.attributes is not None and ok.attributes[sc.GEN_AI_TOOL_CALL_RESULT] == "42"
    assert ok.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS] == "[21]"
    assert not failed.status.is_ok
    assert failed.attributes is not None and failed.attributes[sc.ERROR_TYPE] == "ToolError"


def test_tool_content_stays_off_spans_by_default(spans) -> None:
    run(on_event=OTelSubscriber(tracer_provider=spans.provider, capture_content=False))
    for span in spans.named("execute_tool double"):
        assert span.attributes is not None
        assert sc.GEN_AI_TOOL_CALL_ARGUMENTS not in span.attributes
        assert sc.GEN_AI_TOOL_CALL_RESULT not in span.attributes


def test_tool_calls_are_logged() -> None:
    with capture_logs() as logs:
        run(on_event=StructlogSubscriber())
    finished = [e for e in logs if e["event"] == "rlm.tool_call.finished"]
    assert [(e["name"], e["ok"]) for e in finished] == [("double", True), ("double", False)]
    assert finished[1]["error"] == "double() raised ValueError: negative"
    assert finished[1]["log_level"] == "warning"


def test_tool_calls_are_in_the_trajectory_and_the_viewer_tree(tmp_path) -> None:
    path = tmp_path / "run.jsonl"
    with TrajectoryRecorder(path) as recorder:
        run(on_event=recorder)
    trajectory = load_trajectory(path)
    (block,) = trajectory.root.code_executions
    assert [(t.name, t.ok, t.result) for t in block.tool_calls] == [
        ("double", True, "42"),
        ("double", False, ""),
    ]
    tree = build_tree(trajectory.events)
    tools = tree[0]["iterations"][0]["blocks"][0]["tools"]
    assert [t["arguments"] for t in tools] == ["[21]", "[-1]"]


def test_the_console_shows_tool_calls() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None)
    run(on_event=ConsoleView(console))
    text = buffer.getvalue()
    assert "tool double · ok" in text
    assert "tool double · failed: double() raised ValueError: negative" in text
