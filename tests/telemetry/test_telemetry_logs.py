"""Structured logs: one line per event, bound ids, trace ids, and silence by default."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import structlog
from structlog.testing import capture_logs

import rlm
from rlm.telemetry import OTelSubscriber, StructlogSubscriber
from rlm.testing import ScriptedModel

CODE = "```repl\nprint('secret ' + context)\n```"


def run(on_event=None, **kwargs):
    return rlm.run(
        "the query",
        "CTX",
        model=ScriptedModel([CODE, "FINAL(42)"]),
        repl="inprocess",
        on_event=on_event,
        **kwargs,
    )


def test_one_structured_line_per_event_with_run_id_and_depth():
    events: list[rlm.Event] = []
    with capture_logs() as logs:
        result = run(on_event=[events.append, StructlogSubscriber()])
    assert [entry["event"] for entry in logs] == [
        "rlm.run.started",
        "rlm.iteration.started",
        "rlm.model_call.started",
        "rlm.model_call.finished",
        "rlm.code.started",
        "rlm.code.executed",
        "rlm.iteration.started",
        "rlm.model_call.started",
        "rlm.model_call.finished",
        "rlm.final_answer",
        "rlm.run.finished",
    ]
    assert len(logs) == len(events)
    assert all(e["run_id"] == result.run_id and e["depth"] == 0 for e in logs)
    finished = logs[-1]
    assert finished["log_level"] == "info"
    assert finished["stop_reason"] == "final"
    assert finished["iterations"] == 2
    assert finished["input_tokens"] == result.total_input_tokens
    call = logs[3]
    assert call["model"] == "scripted" and call["output_tokens"] > 0
    assert logs[2]["log_level"] == "debug"  # the *.started lines of calls and code


def test_content_is_logged_only_on_request():
    with capture_logs() as plain:
        run(on_event=StructlogSubscriber())
    assert "secret CTX" not in repr(plain) and "the query" not in repr(plain)
    with capture_logs() as full:
        run(on_event=StructlogSubscriber(include_content=True))
    executed = next(e for e in full if e["event"] == "rlm.code.executed")
    assert executed["stdout"] == "secret CTX\n"
    assert full[0]["query"] == "the query"


def test_lines_carry_the_trace_and_span_ids_of_the_current_span(spans):
    with capture_logs() as logs:
        run(on_event=[OTelSubscriber(spans.provider), StructlogSubscriber()])
    (run_span,) = spans.named("invoke_agent")
    trace_id = format(run_span.context.trace_id, "032x")
    assert {e.get("trace_id") for e in logs} == {trace_id}
    chat_ids = {format(s.context.span_id, "016x") for s in spans.named("chat")}
    started = [e for e in logs if e["event"] == "rlm.model_call.started"]
    assert {e["span_id"] for e in started} == chat_ids


def test_failures_are_warnings_and_errors():
    model = ScriptedModel([rlm.errors.ProviderUnavailableError("down")])
    with capture_logs() as logs, pytest.raises(rlm.errors.ProviderUnavailableError):
        rlm.run("q", "c", model=model, repl="inprocess", on_event=StructlogSubscriber())
    levels = {e["event"]: e["log_level"] for e in logs}
    assert levels["rlm.model_call.finished"] == "warning"
    assert levels["rlm.run.failed"] == "error"
    failed = logs[-1]
    assert failed["error_type"] == "ProviderUnavailableError"


def test_nothing_is_printed_by_default(capsys):
    # structlog is imported (this module imports it) but not configured, stdlib logging
    # is at its default level: a library must stay quiet.
    assert not structlog.is_configured()
    run()
    run(on_event=StructlogSubscriber())
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ""


def test_configured_stdlib_logging_receives_the_lines(caplog):
    caplog.set_level(logging.DEBUG, logger="rlm.events")
    result = run()  # the default subscribers
    records = [r for r in caplog.records if r.name == "rlm.events"]
    assert records[0].getMessage().startswith(f"rlm.run.started run_id={result.run_id} depth=0")
    finished = records[-1]
    assert finished.levelno == logging.INFO
    assert finished.rlm["event"] == "rlm.run.finished"  # type: ignore[attr-defined]
    assert finished.rlm["stop_reason"] == "final"  # type: ignore[attr-defined]


def test_configured_structlog_is_used_by_default():
    with capture_logs() as logs:
        run()  # no subscriber passed: the default one logs through structlog
    assert logs[0]["event"] == "rlm.run.started"


def test_import_rlm_loads_no_telemetry_dependency():
    script = textwrap.dedent(
        """
        import sys
        import rlm
        from rlm.testing import ScriptedModel
        heavy = ("opentelemetry", "structlog", "rich")
        assert not [m for m in sys.modules if m.split(".")[0] in heavy], "import rlm"
        rlm.run("q", "c", model=ScriptedModel(["FINAL(1)"]), repl="inprocess")
        loaded = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy})
        print(loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    # A run of an application that configured neither OpenTelemetry nor structlog
    # does not pay for importing them.
    assert done.stdout.strip() == "[]"


def test_every_event_kind_has_a_log_line_name():
    from rlm.events import EVENT_TYPES
    from rlm.telemetry.semconv import LOG_EVENT_NAMES

    assert set(LOG_EVENT_NAMES) == set(EVENT_TYPES)
